//! The `keyplane` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyplane_domain::{ManagementRole, Name, format_duration, parse_duration};
use keyplane_server::config::describe_location;
use keyplane_server::events::Events;
use keyplane_server::ops::admin_keys;
use keyplane_server::ops::{Actor, Apply, Change, Origin, Sinks};
use keyplane_server::{App, Settings, SettingsArgs, routes, telemetry};
use keyplane_store::Database;

/// Small allocations dominate a request's life (headers, ids, bodies);
/// mimalloc serves them from thread-local pages instead of glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Manage operators' admin keys directly in the database.
    #[command(subcommand)]
    AdminKey(AdminKeyCommand),
    /// Work with audit log exports.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rotate the master key that seals secrets at rest.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
    /// Run beside an instance: enroll on first start, keep its key in a file
    /// and rotate it when due.
    Agent(keyplane_agent::AgentArgs),
    /// Find keyplane keys in files and folders, print them masked with file
    /// and line; with --report, send them to keyplane (POST /v1/leaks), which
    /// stops every one that still works. Exits 1 when any key is found.
    Scan {
        /// Files and folders (walked recursively, symbolic links not followed).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Report what is found to keyplane.
        #[arg(long)]
        report: bool,
        /// keyplane's URL, for --report.
        #[arg(long, env = "KEYPLANE_URL")]
        url: Option<String>,
        /// Certificates to trust for keyplane's URL (PEM), besides the system's.
        #[arg(long, env = "KEYPLANE_CA_BUNDLE")]
        ca_bundle: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum MasterKeyCommand {
    /// Re-seal every sealed secret (signing keys, webhook secrets) under
    /// KEYPLANE_MASTER_KEY, in one transaction, opening each with it or with
    /// KEYPLANE_MASTER_KEY_PREVIOUS (the key being replaced). Run it with
    /// both set, restart keyplane with both, then drop the previous one.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check an NDJSON export (GET /v1/audit/export) offline: every entry
    /// intact, in order, and linked to the one before; with --trust, also
    /// every signed checkpoint and the export's signed trailer (so a file cut
    /// at either end, or a chain rewritten since a checkpoint, is caught).
    Verify {
        /// The export file.
        file: std::path::PathBuf,
        /// Keys to believe: a JWKS file (e.g. a saved /.well-known/jwks.json),
        /// or a pinned fingerprint `sha256:<hex>` of a key the export carries.
        /// May be given more than once.
        #[arg(long)]
        trust: Vec<String>,
        /// Checkpoints kept outside keyplane (a saved GET /v1/audit/checkpoints
        /// answer): the export must agree with each, and reach those older
        /// than itself when it runs to the head.
        #[arg(long)]
        checkpoints: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AdminKeyCommand {
    /// Create an admin key and print it once (for setups without a bootstrap token).
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// admin, operator, auditor or viewer.
        #[arg(long)]
        role: String,
        /// Lifetime (seconds or e.g. 30d; default and maximum: KEYPLANE_MAX_KEY_LIFETIME).
        #[arg(long)]
        expires_in: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Openapi => return print_openapi(),
        Command::Audit(AuditCommand::Verify {
            file,
            trust,
            checkpoints,
        }) => return verify_export(file, trust, checkpoints.as_deref()),
        Command::Agent(args) => return agent(args.clone(), cli.settings.mode.as_deref()),
        Command::Scan {
            paths,
            report,
            url,
            ca_bundle,
        } => {
            return scan(
                paths,
                report.then_some(url.as_deref()),
                ca_bundle.as_deref(),
            );
        }
        _ => {}
    }
    let settings = match Settings::load(&cli.settings) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("keyplane: {err}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init(settings.log_format);
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::AdminKey(AdminKeyCommand::Create {
                name,
                role,
                expires_in,
            }) => create_admin_key(settings, &name, &role, expires_in.as_deref()).await,
            Command::MasterKey(MasterKeyCommand::Rotate) => rotate_master_key(settings).await,
            Command::Openapi | Command::Audit(_) | Command::Agent(_) | Command::Scan { .. } => {
                Ok(())
            }
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

/// The async runtime `builder` makes, or the exit code when it cannot.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        eprintln!("keyplane: cannot start the async runtime: {err}");
        ExitCode::FAILURE
    })
}

/// `keyplane agent`: needs none of the server's settings, only its own.
fn agent(args: keyplane_agent::AgentArgs, mode: Option<&str>) -> ExitCode {
    let mode: keyplane_domain::Mode = match mode.unwrap_or("dev").parse() {
        Ok(mode) => mode,
        Err(_) => {
            eprintln!("keyplane: KEYPLANE_MODE: expected one of dev, mixed, prod");
            return ExitCode::from(2);
        }
    };
    let format = if mode == keyplane_domain::Mode::Prod {
        keyplane_server::config::LogFormat::Json
    } else {
        keyplane_server::config::LogFormat::Text
    };
    let _telemetry = telemetry::init(format);
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(keyplane_agent::run(args, mode, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "keyplane agent stopped on an error");
            eprintln!("keyplane agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `keyplane scan`: prints what it finds (masked) on standard output, what
/// it skipped on standard error; `report` is Some(keyplane's URL) to send
/// the finds there. 0: nothing found; 1: keys found; 2: it could not do
/// what was asked.
fn scan(
    paths: &[std::path::PathBuf],
    report: Option<Option<&str>>,
    ca_bundle: Option<&std::path::Path>,
) -> ExitCode {
    let found = keyplane_server::scan::scan(paths);
    for (path, why) in &found.skipped {
        eprintln!("keyplane scan: skipped {}: {why}", path.display());
    }
    for finding in &found.findings {
        println!("{}", finding.describe());
    }
    if found.findings.is_empty() {
        return ExitCode::SUCCESS;
    }
    if let Some(url) = report {
        let Some(url) = url else {
            eprintln!("keyplane scan: --report needs keyplane's URL (--url or KEYPLANE_URL)");
            return ExitCode::from(2);
        };
        let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
            Ok(runtime) => runtime,
            Err(code) => return code,
        };
        let reported = runtime.block_on(keyplane_server::scan::report(
            url,
            ca_bundle,
            &found.findings,
        ));
        match reported {
            Ok(()) => eprintln!(
                "keyplane scan: reported {} finds to {url}; every key that still worked is stopped",
                found.findings.len()
            ),
            Err(err) => {
                eprintln!("keyplane scan: {err:#}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::from(1)
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

async fn rotate_master_key(settings: Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.master_key.is_some(),
        "KEYPLANE_MASTER_KEY: required: the new master key (and KEYPLANE_MASTER_KEY_PREVIOUS, \
         the one it replaces)"
    );
    let master = keyplane_server::app::master_key(&settings)?;
    let db = Database::connect(&settings.database, &settings.pool).await?;
    let resealed = async {
        db.migrate().await?;
        let events = Events::new(!db.is_embedded());
        let sinks = Sinks {
            pool: db.pool(),
            events: &events,
            credentials: None,
        };
        let origin = Origin::default();
        let now = chrono::Utc::now();
        let mut change = Change::begin(sinks, &Actor::Cli, &origin, now, Apply).await?;
        let resealed = keyplane_server::ops::master_key::reseal(&mut change, &master).await?;
        change.finish(()).await?;
        anyhow::Ok(resealed)
    }
    .await;
    db.close().await;
    let resealed = resealed?;
    eprintln!(
        "re-sealed under the new master key: {} signing keys, {} webhook secrets ({} already \
         were); restart keyplane with KEYPLANE_MASTER_KEY set to it, then remove \
         KEYPLANE_MASTER_KEY_PREVIOUS",
        resealed.signing_keys, resealed.webhook_secrets, resealed.already
    );
    Ok(())
}

async fn create_admin_key(
    settings: Settings,
    name: &str,
    role: &str,
    expires_in: Option<&str>,
) -> anyhow::Result<()> {
    let name = Name::parse(name).map_err(|err| anyhow::anyhow!("--name {err}"))?;
    let role: ManagementRole = role
        .parse()
        .map_err(|err| anyhow::anyhow!("--role: {err}"))?;
    let lifetime = match expires_in {
        Some(text) => parse_duration(text).map_err(|err| anyhow::anyhow!("--expires-in: {err}"))?,
        None => settings.max_key_lifetime,
    };
    if lifetime > settings.max_key_lifetime || lifetime.is_zero() {
        anyhow::bail!(
            "--expires-in: keys may live at most {} (KEYPLANE_MAX_KEY_LIFETIME)",
            format_duration(settings.max_key_lifetime)
        );
    }
    let db = Database::connect(&settings.database, &settings.pool).await?;
    let created = async {
        db.migrate().await?;
        let now = chrono::Utc::now();
        let expires_at = now + chrono::Duration::from_std(lifetime)?;
        // A running keyplane hears of the new key (PostgreSQL NOTIFY).
        let events = Events::new(!db.is_embedded());
        let sinks = Sinks {
            pool: db.pool(),
            events: &events,
            credentials: None,
        };
        let origin = Origin::default();
        let mut change = Change::begin(sinks, &Actor::Cli, &origin, now, Apply).await?;
        let (row, secret) = admin_keys::issue(&mut change, &name, role, expires_at).await?;
        change.finish(()).await?;
        anyhow::Ok((row, secret))
    }
    .await;
    db.close().await;
    let (row, secret) = created?;
    eprintln!(
        "admin key {} ({}, role {}) expires {}; it is shown only once:",
        row.id, row.name, row.role, row.expires_at
    );
    println!("{}", secret.expose());
    Ok(())
}

/// Prints the verdict; exits 0 when the export holds, 1 when it does not,
/// 2 when the file (or the trusted keys) cannot be read.
fn verify_export(
    path: &std::path::Path,
    trust: &[String],
    checkpoints: Option<&std::path::Path>,
) -> ExitCode {
    match keyplane_server::audit_trail::verify_file(path, trust, checkpoints) {
        Ok(verdict) => {
            println!("{}", serde_json::to_string(&verdict).unwrap_or_default());
            if verdict.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("keyplane: {err}");
            ExitCode::from(2)
        }
    }
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
