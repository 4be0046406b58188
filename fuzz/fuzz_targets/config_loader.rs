//! The site file loader on arbitrary text: it never panics, and no error
//! or warning it reports quotes a password, whether the password is a
//! server's inline `password` or in a source URL's user info (with or
//! without a scheme). The input is TOML as an operator might write it;
//! the secrets are found in it the way an operator would see them.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mcrelay::config::{PasswordSource, Site, plan};

/// The passwords of `user:password@` in the text, and `password = "..."`
/// values: at least 4 characters, and only those that appear once in the
/// text (a password that also stands elsewhere, e.g. as a channel name,
/// may be quoted there).
fn secrets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`')) {
        if let Some(at) = word.rfind('@') {
            let start = word[..at].find("://").map_or(0, |i| i + 3);
            if let Some(colon) = word[start..at].find(':') {
                out.push(word[start + colon + 1..at].to_string());
            }
        }
    }
    for line in text.lines() {
        if let Some(v) = line.trim().strip_prefix("password")
            && let Some(v) = v.trim().strip_prefix('=')
            && let Some(v) = v.trim().strip_prefix('"')
            && let Some(end) = v.find('"')
        {
            out.push(v[..end].to_string());
        }
    }
    out.retain(|p| {
        p.len() >= 4
            && p.chars().all(|c| c.is_ascii_alphanumeric())
            && text.matches(p.as_str()).count() == 1
    });
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let secrets = secrets(text);
    let check = |what: &str| {
        for s in &secrets {
            assert!(!what.contains(s.as_str()), "{s:?} in {what:?}");
        }
    };
    match Site::parse(text, Path::new("site.toml")) {
        Err(e) => check(&e.to_string()),
        Ok(site) => {
            for w in &site.warnings {
                check(&w.to_string());
            }
            for server in site.servers() {
                for c in &server.channels {
                    check(&c.source.redacted());
                    check(&format!("{:?}", c.source));
                    if let Some(mc) = &server.multicast {
                        let _ = plan::destination(mc, c.id);
                    }
                }
                // Files are not read here: a fuzzed path could be a device.
                if !matches!(server.password, Some(PasswordSource::File(_)))
                    && let Err(e) = site.password(server)
                {
                    check(&e.to_string());
                }
            }
        }
    }
});
