//! Typed device helpers.
