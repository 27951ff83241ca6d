//! Host side: everything that runs on a deploy target and changes it.

pub mod activate;
pub mod agent;
pub mod cancel;
pub mod check;
pub mod hooks;
pub mod init;
pub mod instances;
pub mod lock;
pub mod logs;
pub mod probe;
pub mod provision;
pub mod proxy;
pub mod restart;
pub mod revisions;
pub mod secrets;
pub mod store;
pub mod supervisor;
