//! Prometheus metrics: `GET /metrics` in the text exposition format.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use std::time::Duration;

use axum::http::{Method, StatusCode};
use keyplane_store::stats;
use uuid::Uuid;

/// Counters kept by the request paths.
#[derive(Debug, Default)]
pub struct Metrics {
    introspections_active: AtomicU64,
    introspections_inactive: AtomicU64,
    inactive_by_node: Mutex<HashMap<Uuid, u64>>,
    /// Requests by route template, then method: a fixed table, so counting
    /// takes no lock and allocates nothing.
    routes: HashMap<String, Vec<(Method, RouteStats)>>,
    /// Figures read from the database in the background, never at scrape
    /// time: an unauthenticated scrape costs no query.
    gauges: RwLock<Option<Gauges>>,
}

/// What the database says, as last read.
#[derive(Debug, Clone)]
struct Gauges {
    keys_by_status: Vec<(String, i64)>,
    keys_expiring_7d: i64,
    audit_length: i64,
    credentials: Arc<Credentials>,
    /// The busiest instances: (id, name, tokens, requests) since the hour before.
    top_usage: Vec<(Uuid, String, i64, i64)>,
    read_at: std::time::Instant,
}

/// How many instances `/metrics` names in its usage figures: the busiest,
/// so the label set stays bounded however many instances there are.
const TOP_INSTANCES: i64 = 10;

/// A label value as Prometheus' text format writes it.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the last read found of the fleet's credentials.
#[derive(Debug)]
pub struct Credentials {
    /// The nearest expiries, by kind of credential.
    pub expiries: Vec<stats::Expiries>,
    /// How many admin keys worked.
    pub live_admin_keys: i64,
    /// When it was read, by keyplane's clock.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// One route's requests: counts by status class and a latency histogram.
#[derive(Debug, Default)]
struct RouteStats {
    /// Indexed by the status' first digit, 1 to 5 (0 unused).
    by_class: [AtomicU64; 6],
    /// Non-cumulative counts per bucket; the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    micros: AtomicU64,
}

impl Metrics {
    /// Metrics for the given routes (method and path template, as axum
    /// matches them).
    pub fn for_routes(routes: impl IntoIterator<Item = (Method, String)>) -> Metrics {
        let mut table: HashMap<String, Vec<(Method, RouteStats)>> = HashMap::new();
        for (method, route) in routes {
            table
                .entry(route)
                .or_default()
                .push((method, RouteStats::default()));
        }
        Metrics {
            routes: table,
            ..Metrics::default()
        }
    }

    /// Counts one request to `route` that answered `status` after `elapsed`.
    pub fn answered(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let Some(stats) = self
            .routes
            .get(route)
            .and_then(|methods| methods.iter().find(|(m, _)| m == method))
            .map(|(_, stats)| stats)
        else {
            return;
        };
        let class = usize::from(status.as_u16() / 100).min(5);
        stats.by_class[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        stats.micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render_routes(&self, out: &mut Exposition) {
        let mut routes: Vec<(&Method, &String, &RouteStats)> = self
            .routes
            .iter()
            .flat_map(|(route, methods)| methods.iter().map(move |(m, stats)| (m, route, stats)))
            .collect();
        routes.sort_by(|(m1, r1, _), (m2, r2, _)| (r1, m1.as_str()).cmp(&(r2, m2.as_str())));
        out.family(
            "keyplane_http_requests_total",
            "counter",
            "Requests answered, by route and status class.",
        );
        for (method, route, stats) in &routes {
            for (class, count) in stats.by_class.iter().enumerate().skip(1) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    out.sample(
                        "keyplane_http_requests_total",
                        &format!("method=\"{method}\",route=\"{route}\",status=\"{class}xx\""),
                        count,
                    );
                }
            }
        }
        out.family(
            "keyplane_http_request_duration_seconds",
            "histogram",
            "Time to answer, by route.",
        );
        for (method, route, stats) in &routes {
            let labels = format!("method=\"{method}\",route=\"{route}\"");
            let mut cumulative = 0;
            for (i, count) in stats.buckets.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or("+Inf".to_owned(), f64::to_string);
                out.sample(
                    "keyplane_http_request_duration_seconds_bucket",
                    &format!("{labels},le=\"{le}\""),
                    cumulative,
                );
            }
            let sum = stats.micros.load(Ordering::Relaxed) as f64 / 1e6;
            out.sample("keyplane_http_request_duration_seconds_sum", &labels, sum);
            out.sample(
                "keyplane_http_request_duration_seconds_count",
                &labels,
                cumulative,
            );
        }
    }
}

impl Metrics {
    /// Reads the database-backed figures again (keeping the last ones when
    /// the database does not answer).
    pub async fn refresh_gauges(&self, pool: &sqlx::PgPool, now: chrono::DateTime<chrono::Utc>) {
        let read = async {
            Ok::<_, keyplane_store::StoreError>(Gauges {
                keys_by_status: stats::keys_by_status(pool, now).await?,
                keys_expiring_7d: stats::keys_expiring(pool, now, chrono::Duration::days(7))
                    .await?,
                audit_length: stats::audit_length(pool).await?,
                top_usage: keyplane_store::usage::top_instances(
                    pool,
                    chrono::DurationRound::duration_trunc(
                        now - chrono::Duration::hours(1),
                        chrono::Duration::hours(1),
                    )
                    .unwrap_or(now),
                    TOP_INSTANCES,
                )
                .await?,
                credentials: Arc::new(Credentials {
                    expiries: stats::credential_expiries(pool, now).await?,
                    live_admin_keys: stats::live_admin_keys(pool, now).await?,
                    at: now,
                }),
                read_at: std::time::Instant::now(),
            })
        };
        match read.await {
            Ok(gauges) => {
                if let Ok(mut slot) = self.gauges.write() {
                    *slot = Some(gauges);
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "metrics: could not read the database's figures")
            }
        }
    }

    /// What the last read found of the fleet's credentials, if there was one.
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        let gauges = self.gauges.read().ok()?;
        gauges.as_ref().map(|g| g.credentials.clone())
    }

    /// Counts one introspection answer for `node`.
    pub fn introspected(&self, node: Uuid, active: bool) {
        if active {
            self.introspections_active.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.introspections_inactive.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut nodes) = self.inactive_by_node.lock() {
            *nodes.entry(node).or_default() += 1;
        }
    }
}

/// What `/metrics` shows besides the counters kept here.
#[derive(Debug, Clone, Copy)]
pub struct Scrape {
    /// Key lookups so far, and how many of them missed the cache.
    pub lookups: (u64, u64),
    /// Whether this process runs the scheduler.
    pub scheduler_leader: bool,
    /// When its last run began (Unix seconds, keyplane's clock), 0 if none.
    pub scheduler_ran: i64,
    /// The database pool's idle and open connections.
    pub pool: (usize, u32),
    /// Revocation streams open on this process.
    pub streams: usize,
}

impl Metrics {
    /// Every metric, in Prometheus' text format.
    pub fn render(&self, scrape: Scrape) -> String {
        let mut out = Exposition::default();
        out.family(
            "keyplane_introspections_total",
            "counter",
            "Introspection answers, by outcome.",
        );
        for (outcome, counter) in [
            ("active", &self.introspections_active),
            ("inactive", &self.introspections_inactive),
        ] {
            out.sample(
                "keyplane_introspections_total",
                &format!("outcome=\"{outcome}\""),
                counter.load(Ordering::Relaxed),
            );
        }
        out.family(
            "keyplane_introspections_inactive_by_node_total",
            "counter",
            "Inactive answers, by the node that asked.",
        );
        if let Ok(nodes) = self.inactive_by_node.lock() {
            for (node, count) in nodes.iter() {
                out.sample(
                    "keyplane_introspections_inactive_by_node_total",
                    &format!("node=\"{node}\""),
                    count,
                );
            }
        }
        let (lookups, loads) = scrape.lookups;
        out.family(
            "keyplane_introspection_cache_lookups_total",
            "counter",
            "Key lookups, and how many missed the cache.",
        );
        out.sample(
            "keyplane_introspection_cache_lookups_total",
            "result=\"hit\"",
            lookups.saturating_sub(loads),
        );
        out.sample(
            "keyplane_introspection_cache_lookups_total",
            "result=\"miss\"",
            loads,
        );
        out.family(
            "keyplane_scheduler_leader",
            "gauge",
            "1 while this process runs the scheduler (one replica at a time).",
        );
        out.sample(
            "keyplane_scheduler_leader",
            "",
            u8::from(scrape.scheduler_leader),
        );
        out.family(
            "keyplane_revocation_streams",
            "gauge",
            "Revocation streams (nodes following revocations) open on this process.",
        );
        out.sample("keyplane_revocation_streams", "", scrape.streams);
        out.family(
            "keyplane_scheduler_last_run_timestamp_seconds",
            "gauge",
            "When this process's last complete scheduler run began (0: none yet); a leader whose value stops moving is stuck.",
        );
        out.sample(
            "keyplane_scheduler_last_run_timestamp_seconds",
            "",
            scrape.scheduler_ran,
        );
        // Database-backed figures come from the last background read; they are
        // left out until there is one.
        let gauges = self.gauges.read().ok().and_then(|g| g.clone());
        if let Some(gauges) = gauges {
            out.family("keyplane_keys", "gauge", "Instance keys, by status.");
            for (status, count) in &gauges.keys_by_status {
                out.sample("keyplane_keys", &format!("status=\"{status}\""), count);
            }
            out.family(
                "keyplane_keys_expiring_7d",
                "gauge",
                "Working keys that expire within 7 days.",
            );
            out.sample("keyplane_keys_expiring_7d", "", gauges.keys_expiring_7d);
            out.family(
                "keyplane_audit_chain_length",
                "gauge",
                "Entries in the audit chain.",
            );
            out.sample("keyplane_audit_chain_length", "", gauges.audit_length);
            type Figure = fn(&(Uuid, String, i64, i64)) -> i64;
            let figures: [(&str, &str, Figure); 2] = [
                (
                    "keyplane_usage_tokens_recent",
                    "Tokens reported in this hour and the last, for the 10 busiest instances.",
                    |row| row.2,
                ),
                (
                    "keyplane_usage_requests_recent",
                    "Requests reported in this hour and the last, for the 10 busiest instances.",
                    |row| row.3,
                ),
            ];
            for (name, help, figure) in figures {
                out.family(name, "gauge", help);
                for row in &gauges.top_usage {
                    let labels = format!(
                        "instance_id=\"{}\",instance=\"{}\"",
                        row.0,
                        label_value(&row.1)
                    );
                    out.sample(name, &labels, figure(row));
                }
            }
            out.family(
                "keyplane_credential_expiry_seconds",
                "gauge",
                "Seconds until the nearest expiry of a working credential without a successor, by kind.",
            );
            let credentials = &gauges.credentials;
            for expiry in &credentials.expiries {
                out.sample(
                    "keyplane_credential_expiry_seconds",
                    &format!("kind=\"{}\"", expiry.kind),
                    (expiry.nearest - credentials.at).num_seconds(),
                );
            }
            out.family(
                "keyplane_gauges_age_seconds",
                "gauge",
                "How old the database-backed figures above are.",
            );
            out.sample(
                "keyplane_gauges_age_seconds",
                "",
                format_args!("{:.1}", gauges.read_at.elapsed().as_secs_f64()),
            );
        }
        out.family(
            "keyplane_db_pool_connections",
            "gauge",
            "Database pool connections, by state.",
        );
        out.sample(
            "keyplane_db_pool_connections",
            "state=\"idle\"",
            scrape.pool.0,
        );
        out.sample(
            "keyplane_db_pool_connections",
            "state=\"open\"",
            scrape.pool.1,
        );
        self.render_routes(&mut out);
        out.0
    }
}

/// Prometheus' text exposition format, written family by family.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// A family's `HELP` and `TYPE` lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; `labels` is empty or `key="value",...`.
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = if labels.is_empty() {
            writeln!(self.0, "{name} {value}")
        } else {
            writeln!(self.0, "{name}{{{labels}}} {value}")
        };
    }
}
