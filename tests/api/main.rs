//! Black-box tests: the real server on port 0, talking HTTP to a real
//! PostgreSQL (a fresh database per test, from `KEYPLANE_TEST_DATABASE_URL`,
//! which `scripts/test` provides).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

mod abuse;
mod access;
mod agent;
mod audit;
mod audit_anchors;
mod bad_input;
mod cli;
mod client;
mod connections;
mod console;
mod ctl;
mod embedded;
mod errors;
mod fleet;
mod forward_auth;
mod health;
mod idp;
mod instances;
mod introspect;
mod keys;
mod leak_reports;
mod leaks;
mod legacy;
mod lifecycle;
mod limits;
mod people;
mod plans;
mod scopes;
mod selectors;
mod self_service;
mod time_travel;
mod tls;
mod usage;
mod webhooks;
