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
        let mut site = Site::parse(&text, path)?;
        site.check_password_files();
        Ok(site)
    }

    /// Password files that others than the owner may read: warned about
    /// (in `check` and at start).
    fn check_password_files(&mut self) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for s in &self.file.servers {
            let Some(PasswordSource::File(f)) = &s.password else {
                continue;
            };
            let full = dir.join(f);
            if let Ok(m) = std::fs::metadata(&full)
                && m.permissions().mode() & 0o077 != 0
            {
                self.warnings.push(Issue {
                    severity: Severity::Warning,
                    key: format!("server {:?} password.file", s.name),
                    message: format!(
                        "{} can be read by its group or others (mode {:o})",
                        full.display(),
                        m.permissions().mode() & 0o777
                    ),
                    fix: format!("chmod 600 {}", full.display()),
                });
            }
        }
    }

    /// Parses and validates `text`, reported as coming from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Site, ConfigError> {
        let file: SiteFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: parse_message(text, &e),
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
        self.secret(server.password.as_ref(), &server.name, "password")
    }

    /// The password for etcd (`site.failover.etcd_password`).
    pub fn etcd_password(&self) -> Result<Option<Secret>, ConfigError> {
        self.secret(
            self.file.site.failover.etcd_password.as_ref(),
            "site.failover",
            "etcd_password",
        )
    }

    /// The site key (`[site] key`), resolved and read; `None` when the
    /// site has none. The error never holds the key.
    pub fn site_key(&self) -> Result<Option<crate::failover::beacon::SiteKey>, ConfigError> {
        let Some(secret) = self.secret(self.file.site.key.as_ref(), "site", "key")? else {
            return Ok(None);
        };
        crate::failover::beacon::SiteKey::from_hex(secret.expose())
            .map(Some)
            .map_err(|message| ConfigError::Password {
                path: self.path.clone(),
                server: "site".into(),
                message: format!("key: {message}"),
            })
    }

    /// A path of the site file, relative to its folder.
    pub fn relative(&self, p: &Path) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(p)
    }

    /// Where the site's etcd keys live: `key_prefix`, or
    /// `/mcrelay/<site name>/`, always ending in `/`.
    pub fn etcd_prefix(&self) -> String {
        let name = if self.file.site.name.is_empty() {
            "site"
        } else {
            &self.file.site.name
        };
        let mut p = self
            .file
            .site
            .failover
            .key_prefix
            .clone()
            .unwrap_or_else(|| format!("/mcrelay/{name}/"));
        if !p.ends_with('/') {
            p.push('/');
        }
        p
    }

    fn secret(
        &self,
        source: Option<&PasswordSource>,
        owner: &str,
        key: &str,
    ) -> Result<Option<Secret>, ConfigError> {
        let err = |message: String| ConfigError::Password {
            path: self.path.clone(),
            server: owner.to_string(),
            message,
        };
        match source {
            None => Ok(None),
            Some(PasswordSource::Inline(p)) => Ok(Some(Secret::new(p.clone()))),
            Some(PasswordSource::Env(var)) => match std::env::var(var) {
                Ok(v) if v.is_empty() => Err(err(format!(
                    "environment variable {var} is empty; an empty password is no password: set it"
                ))),
                Ok(v) => Ok(Some(Secret::new(v))),
                Err(_) => Err(err(format!(
                    "environment variable {var} is not set; set it or change {key}.env"
                ))),
            },
            Some(PasswordSource::File(f)) => {
                let full = self.relative(f);
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    err(format!(
                        "cannot read {}: {e}; fix the path in {key}.file",
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

/// A TOML error without the source snippet toml would print (the line may
/// hold a password or a camera URL with one): where it is, the key of that
/// line, and the message, itself stripped of credentials.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = source::redact_credentials(e.message().trim());
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        // Only what reads as a TOML key is quoted back: anything else on
        // the line may be a value, a URL with its password say (found by
        // the config_loader fuzz target).
        .filter(|k| {
            !k.is_empty()
                && k.len() <= 64
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ' '))
        });
    match key {
        Some(k) => format!("line {line}, column {column} (`{k} = ...`): {message}"),
        None => format!("line {line}, column {column}: {message}"),
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
