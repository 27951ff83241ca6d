//! `shipjar.toml`: parsing with spans, validation, and the built-in `local` stage.
//!
//! Every error names the file, line, column and key, and says what was expected.

pub mod artifact;
pub mod defaults;
mod diagnostics;
pub mod hosts;
pub mod roles;
pub mod schema;
mod spec;
pub mod stage;
pub mod validate;
pub mod values;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::DeTable;

use crate::error::{Error, Result};
use diagnostics::{Outline, describe, error_key};

// What the rest of the operator names; everything else is reachable through its module.
pub use hosts::HostSpec;
pub use schema::{Builtin, Config, OnFailure};
pub use stage::{ResolvedStage, SecretFrom, StageSecret};
pub use values::{BatchSize, Bytes, Millis, Pause, ServiceName};

/// The absolute directory a project file is in.
pub fn project_dir(file: &Path) -> Result<PathBuf> {
    std::path::absolute(file)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| Error::config(format!("{}: cannot resolve its directory", file.display())))
}

/// A loaded project: the parsed file plus where it lives.
#[derive(Debug)]
pub struct Project {
    /// The parsed configuration.
    pub config: Config,
    /// Path of the project file as given.
    pub file: PathBuf,
    /// The project directory (the file's parent), absolute.
    pub dir: PathBuf,
    /// The file's text, for pointing at spans in later errors.
    pub source: String,
    /// Where each key and value is in `source`.
    outline: Outline,
}

impl Project {
    /// Reads and validates the project file.
    pub fn load(file: &Path) -> Result<Project> {
        let source = std::fs::read_to_string(file).map_err(|e| {
            let err = Error::config(format!(
                "{}: cannot read the project file: {e}",
                file.display()
            ));
            if e.kind() == std::io::ErrorKind::NotFound {
                err.hint("run shipjar in the service's directory, or pass -C DIR or --config FILE")
            } else {
                err
            }
        })?;
        Project::from_source(source, file.to_path_buf(), project_dir(file)?)
    }

    /// Parses and validates `source`, the text of `file` in directory `dir`.
    fn from_source(source: String, file: PathBuf, dir: PathBuf) -> Result<Project> {
        let (config, outline) = parse_with_outline(&source, &file)?;
        let project = Project {
            config,
            file,
            dir,
            source,
            outline,
        };
        project.validate()?;
        Ok(project)
    }

    /// An error pointing at `span` in the project file.
    pub fn error_at(&self, span: Range<usize>, key: &str, message: &str) -> Error {
        Error::config(describe(
            &self.source,
            &self.file,
            Some(span),
            Some(key),
            message,
        ))
    }
}

/// Parses the project file text (without validating it).
#[cfg(test)]
pub fn parse(source: &str, file: &Path) -> Result<Config> {
    parse_with_outline(source, file).map(|(config, _)| config)
}

/// Parses the text once into the parser's spanned tree, then deserializes
/// the config from that tree; errors are located through its spans.
fn parse_with_outline(source: &str, file: &Path) -> Result<(Config, Outline)> {
    // Recoverable: even a syntax error leaves a tree that names the key it is in.
    let (doc, errors) = DeTable::parse_recoverable(source);
    let outline = Outline::new(&doc);
    let located = |e: &toml::de::Error| {
        let key = error_key(&outline, e.span(), e.message());
        Error::config(describe(
            source,
            file,
            e.span(),
            key.as_deref(),
            e.message(),
        ))
    };
    if let Some(e) = errors.first() {
        return Err(located(e));
    }
    let config = Config::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| located(&e))?;
    Ok((config, outline))
}

/// Loads `text` as the project file `shipjar.toml` of `/project`.
#[cfg(test)]
pub(crate) fn load_str(text: &str) -> Result<Project> {
    Project::from_source(
        text.to_string(),
        PathBuf::from("shipjar.toml"),
        PathBuf::from("/project"),
    )
}

/// The smallest valid project file.
#[cfg(test)]
const MINIMAL: &str = "[service]\nname = \"hello\"\njar = \"hello.jar\"\n";
