//! The site file: one TOML file describing every server of a site, as a
//! VMS's central manager does. Parsed strictly (unknown keys are errors),
//! validated once at start; every error names the file, the key and the fix.

pub mod plan;
pub mod source;
pub mod types;
pub mod validate;

use std::path::{Path, PathBuf};

pub use plan::Destination;
pub use source::Source;
pub use types::*;
pub use validate::{Issue, Severity};

/// A loaded and validated site file.
#[derive(Debug, Clone)]
pub struct Site {
    pub path: PathBuf,
    pub file: SiteFile,
    /// Warnings found by validation (errors make loading fail).
    pub warnings: Vec<Issue>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the site file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
    #[error("{path}: server {server:?} password: {message}")]
    Password {
        path: PathBuf,
        server: String,
        message: String,
    },
}

impl Site {
    pub fn load(path: &Path) -> Result<Site, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Site::parse(&text, path)
    }

    /// Parses and validates `text`, reported as coming from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Site, ConfigError> {
        let file: SiteFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let (errors, warnings): (Vec<Issue>, Vec<Issue>) = validate::validate(&file)
            .into_iter()
            .partition(|i| i.severity == Severity::Error);
        if !errors.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                issues: errors,
            });
        }
        Ok(Site {
            path: path.to_path_buf(),
            file,
            warnings,
        })
    }

    pub fn servers(&self) -> &[ServerConfig] {
        &self.file.servers
    }

    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.file.servers.iter().find(|s| s.name == name)
    }

    /// The server that owns channel `id`, and the channel.
    pub fn channel(&self, id: u32) -> Option<(&ServerConfig, &ChannelConfig)> {
        self.file
            .servers
            .iter()
            .find_map(|s| s.channels.iter().find(|c| c.id == id).map(|c| (s, c)))
    }

    /// Resolves a server's password (inline, file relative to the site file,
    /// or environment variable).
    pub fn password(&self, server: &ServerConfig) -> Result<Option<Secret>, ConfigError> {
        let err = |message: String| ConfigError::Password {
            path: self.path.clone(),
            server: server.name.clone(),
            message,
        };
        match &server.password {
            None => Ok(None),
            Some(PasswordSource::Inline(p)) => Ok(Some(Secret::new(p.clone()))),
            Some(PasswordSource::Env(var)) => std::env::var(var)
                .map(|v| Some(Secret::new(v)))
                .map_err(|_| {
                    err(format!(
                        "environment variable {var} is not set; set it or change password.env"
                    ))
                }),
            Some(PasswordSource::File(f)) => {
                let full = self.path.parent().unwrap_or(Path::new(".")).join(f);
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    err(format!(
                        "cannot read {}: {e}; fix the path in password.file",
                        full.display()
                    ))
                })?;
                let p = text.trim_end_matches(['\r', '\n']).to_string();
                if p.is_empty() {
                    return Err(err(format!("{} is empty", full.display())));
                }
                Ok(Some(Secret::new(p)))
            }
        }
    }
}

/// Human name of a channel for logs: `3 "Entrance"`.
pub fn channel_label(c: &ChannelConfig) -> String {
    if c.name.is_empty() {
        c.id.to_string()
    } else {
        format!("{} {:?}", c.id, c.name)
    }
}

#[cfg(test)]
mod tests;
