//! The operations layer: every management operation, once.
//!
//! The API's handlers, the console's and bulk operations all come here, so
//! each rule (who may, what is valid, what policy allows, what is audited,
//! who hears of a change) is kept in one place. An operation is a method of
//! [`Ops`], typed by who asks ([`Operator`], [`Holder`], [`Enrollee`],
//! [`Node`]): it takes already-parsed input, checks permission, validates,
//! writes in one transaction with its audit entries and events
//! ([`Change`]), and answers a typed outcome or a [`Refusal`]. It knows
//! nothing of HTTP: no headers, no status codes, no axum.
//!
//! A changing operation takes how to run ([`Apply`] or [`DryRun`]): the same
//! code either commits or answers the [`Plan`] of what it would change.
//!
//! A new operation goes in the module of what it works on (`keys`,
//! `instances`, ...), as a method of `Ops<Operator>` (or of the caller type
//! that may ask for it); its handler under `routes/` extracts, calls it and
//! renders the answer, nothing more.

pub mod actor;
pub mod admin_keys;
pub mod audit;
pub mod authn;
pub mod change;
pub mod denials;
pub mod enrollment;
pub mod fleet;
pub mod health;
pub mod input;
pub mod instances;
pub mod keys;
pub mod leaks;
pub mod legacy;
pub mod limits;
pub mod master_key;
pub mod node_calls;
pub mod nodes;
pub mod people;
pub mod roles;
pub mod rotation;
pub mod scopes;
pub mod self_service;
pub mod signing_keys;
pub mod usage;
pub mod webhooks;

use std::net::IpAddr;

use chrono::{DateTime, Utc};

pub use crate::refusal::Refusal;
pub use actor::{Actor, Enrollee, Holder, Node, Operator, Person, Visitor};
pub use change::{Apply, Change, Credential, DryRun, KeyChange, Plan, Run, Sinks};

use crate::state::AppState;

/// Where a request came from, as the audit log records it.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The request's id, when it came as one.
    pub request_id: Option<String>,
    /// The caller's address (the proxy's, behind one).
    pub client_ip: Option<IpAddr>,
}

/// Operations asked for by `A`, from one origin.
#[derive(Debug)]
pub struct Ops<A> {
    state: AppState,
    actor: A,
    origin: Origin,
}

impl<A> Ops<A> {
    /// Operations `actor` asks for from `origin`.
    pub fn new(state: AppState, actor: A, origin: Origin) -> Ops<A> {
        Ops {
            state,
            actor,
            origin,
        }
    }

    /// Who asks.
    pub fn actor(&self) -> &A {
        &self.actor
    }

    /// Where from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The state the operations work on.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    fn now(&self) -> DateTime<Utc> {
        self.state.clock.now()
    }

    /// The scopes operators defined (the built-in ones are always known).
    async fn defined_scopes(&self) -> Result<Vec<String>, Refusal> {
        Ok(keyplane_store::scopes::names(self.state.db.pool()).await?)
    }

    /// Begins a change made by `actor` at `at`.
    async fn change<R: Run>(
        &self,
        run: R,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> Result<Change<'_, R>, Refusal> {
        let sinks = Sinks {
            pool: self.state.db.pool(),
            events: &self.state.events,
            credentials: Some(&self.state.credentials),
        };
        Change::begin(sinks, actor, &self.origin, at, run).await
    }
}

impl Ops<Operator> {
    /// Begins a change made by this operator at `at`.
    async fn begin<R: Run>(&self, run: R, at: DateTime<Utc>) -> Result<Change<'_, R>, Refusal> {
        self.change(run, &self.actor.actor, at).await
    }
}
