//! The `keyplane` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyplane_server::config::describe_location;
use keyplane_server::{App, Settings, SettingsArgs, routes, telemetry};
use keyplane_store::Database;

/// keyplane: the self-hosted API-key control plane.
#[derive(Debug, Parser)]
#[command(name = "keyplane", version, about)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (applies pending migrations first).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI document (regenerate openapi/openapi.json with it).
    Openapi,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        return print_openapi();
    }
    let settings = match Settings::load(&cli.settings) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("keyplane: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("keyplane: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Openapi => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "keyplane stopped on an error");
            eprintln!("keyplane: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    for (name, value) in settings.summary() {
        tracing::info!(setting = name, %value, "configuration");
    }
    let app = App::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let db = Database::connect(&settings.database, &settings.pool).await?;
    let migrated = db.migrate().await;
    db.close().await;
    migrated?;
    println!(
        "migrations applied to {}",
        describe_location(&settings.database)
    );
    Ok(())
}

fn print_openapi() -> ExitCode {
    match routes::openapi().to_pretty_json() {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("keyplane: cannot render the OpenAPI document: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
