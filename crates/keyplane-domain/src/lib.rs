//! keyplane's domain: the types every other crate speaks, with no IO.
//!
//! Values arrive here as untrusted text and leave as types that cannot hold a
//! bad value ("parse, don't validate").

mod duration;
mod mode;

pub use duration::{DurationError, format_duration, parse_duration};
pub use mode::{Mode, ModeError};
