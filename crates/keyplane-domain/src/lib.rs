//! keyplane's domain: the types every other crate speaks, with no IO.
//!
//! Values arrive here as untrusted text and leave as types that cannot hold a
//! bad value ("parse, don't validate"): a [`KeySecret`] whose checksum was
//! checked, a [`Scope`] from the catalog, a [`Name`] without control characters.

mod access;
mod audit;
mod duration;
mod forward_auth;
mod key;
mod legacy;
mod limits;
mod mode;
mod name;
mod route;
mod scope;
mod selector;

pub use access::{ManagementRole, ManagementRoleError, Permission};
pub use audit::{ChainedFields, GENESIS, chain_hash};
pub use duration::{DurationError, format_duration, parse_duration};
pub use forward_auth::{
    Call, ENVOY_PATH_PREFIX, ForwardAuthProxy, ForwardedError, Original, UnknownProxy, Unreadable,
};
pub use key::{
    KEY_LEN, KeyDigest, KeyError, KeyKind, KeySecret, find_keys, mask_untrusted, scrub_keys,
};
pub use legacy::{InstanceKey, LegacyKey};
pub use limits::{LimitError, Limits, MAX_MODEL_LEN, MAX_MODELS, ModelError, ModelPattern, Models};
pub use mode::{Mode, ModeError};
pub use name::{Name, NameError, RoleName, RoleNameError};
pub use route::{Access, PathError, RouteError, RouteMap, decoded_segments};
pub use scope::{CATALOG as SCOPE_CATALOG, Scope, ScopeError, ScopeSet, effective_scopes};
pub use selector::{Requirement, Selector, SelectorError};
