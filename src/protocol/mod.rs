//! The wire protocol between operator and agent, and the release manifest.

pub mod manifest;
