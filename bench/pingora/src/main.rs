//! Cloudflare's Pingora as a plain reverse proxy, the candidate issue 22
//! names for the gate's forwarding: every request goes to one upstream over
//! kept-alive connections, nothing checked, nothing changed. `bench/gate.sh`
//! (with `PINGORA=1`) measures it beside nginx's `proxy_pass` and the gate.
//!
//!     PROXY_LISTEN=127.0.0.1:18204 PROXY_UPSTREAM=127.0.0.1:18200 \
//!       PROXY_THREADS=1 target/release/keyplane-bench-pingora

use async_trait::async_trait;
use pingora_core::Result;
use pingora_core::server::Server;
use pingora_core::server::configuration::ServerConf;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

/// Forwards everything to `upstream`, plain HTTP.
struct Forward {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let tls = false;
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            tls,
            String::new(),
        )))
    }
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() {
    let listen = setting("PROXY_LISTEN", "127.0.0.1:18204");
    let upstream = setting("PROXY_UPSTREAM", "127.0.0.1:18200");
    // One thread, as nginx runs one worker in the benchmark.
    let threads = setting("PROXY_THREADS", "1").parse().unwrap_or(1);
    let conf = ServerConf {
        threads,
        // The benchmark's SIGTERM ends it at once (Pingora waits 5 minutes).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Forward { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
