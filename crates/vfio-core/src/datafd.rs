//! The migration data fd.
