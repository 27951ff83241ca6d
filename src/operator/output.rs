//! Everything the operator prints goes through here.

use crate::error::Error;

/// Prints an error to stderr.
pub fn print_error(err: &Error) {
    eprintln!("error: {err}");
}
