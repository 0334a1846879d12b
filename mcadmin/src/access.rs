//! The files a domain's connections use besides its table: its credentials (`auth`) and its
//! TLS settings (`tls`); see `libmcshm::access`.

use std::path::Path;

use anyhow::Result;
use libmcshm::tls::{self, Part, TlsSettings, Verify};
use mcshm_cli::UsageError;
use serde_json::json;

use crate::show::print;
use crate::verbs::write::read_input;
use crate::{Exit, Invocation};

pub fn auth(
    ctx: &Invocation,
    user: Option<&str>,
    password_file: Option<&std::path::Path>,
    clear: bool,
) -> Result<Exit> {
    use libmcshm::auth;
    if clear {
        let removed = auth::clear(&ctx.local.dir, &ctx.local.domain)?;
        return print(
            ctx,
            || json!({"domain": ctx.local.domain.as_str(), "cleared": removed}),
            || match removed {
                true => format!("domain {}: credentials removed\n", ctx.local.domain),
                false => format!("domain {}: had no credentials\n", ctx.local.domain),
            },
        )
        .map(|()| Exit::Success);
    }
    let (Some(user), Some(file)) = (user, password_file) else {
        let current = auth::load(&ctx.local.dir, &ctx.local.domain)?;
        let user = current.as_ref().map(|c| c.user.clone());
        return print(
            ctx,
            || json!({"domain": ctx.local.domain.as_str(), "user": user}),
            || match &user {
                Some(u) => format!("domain {}: user {u}\n", ctx.local.domain),
                None => format!("domain {}: no credentials\n", ctx.local.domain),
            },
        )
        .map(|()| {
            if current.is_some() {
                Exit::Success
            } else {
                Exit::No
            }
        });
    };
    let text = read_input(file, "the password")?;
    let password = text.lines().next().unwrap_or("");
    let credentials = auth::Credentials::new(user, password)?;
    let path = auth::save(&ctx.local.dir, &ctx.local.domain, &credentials)?;
    print(
        ctx,
        || json!({"domain": ctx.local.domain.as_str(), "user": user, "file": path}),
        || {
            format!(
                "domain {}: credentials of user {user} in {}\n",
                ctx.local.domain,
                path.display()
            )
        },
    )?;
    Ok(Exit::Success)
}

/// What `mcadmin tls` is asked to store.
pub struct TlsChange<'a> {
    pub ca: Option<&'a Path>,
    pub client: Option<(&'a Path, &'a Path)>,
    pub server_name: Option<&'a str>,
    pub verify: Option<Verify>,
}

pub fn tls(ctx: &Invocation, change: TlsChange<'_>, clear: bool) -> Result<Exit> {
    let path = tls::path(&ctx.local.dir, &ctx.local.domain);
    if clear {
        let removed = tls::clear(&ctx.local.dir, &ctx.local.domain)?;
        return print(
            ctx,
            || json!({"domain": ctx.local.domain.as_str(), "cleared": removed}),
            || match removed {
                true => format!(
                    "domain {}: TLS settings removed (servers in clear)\n",
                    ctx.local.domain
                ),
                false => format!("domain {}: had no TLS settings\n", ctx.local.domain),
            },
        )
        .map(|()| Exit::Success);
    }
    let Some(ca) = change.ca else {
        let current = tls::load_settings(&ctx.local.dir, &ctx.local.domain)?;
        let summary = current.as_ref().map(TlsSettings::summary);
        print(
            ctx,
            || match &summary {
                Some(s) => json!({
                    "domain": ctx.local.domain.as_str(),
                    "tls": true,
                    "verify": s.verify.as_str(),
                    "server_name": s.server_name,
                    "ca_certificates": s.ca_certificates,
                    "client_certificate": s.client_certificate,
                    "file": path,
                }),
                None => json!({"domain": ctx.local.domain.as_str(), "tls": false}),
            },
            || match &summary {
                Some(s) => format!("domain {}: {}\n", ctx.local.domain, describe(s, &path)),
                None => format!("domain {}: no TLS (servers in clear)\n", ctx.local.domain),
            },
        )?;
        return Ok(if current.is_some() {
            Exit::Success
        } else {
            Exit::No
        });
    };
    let pem = |file: &Path, what: &str| read_input(file, what);
    let client = match change.client {
        Some((cert, key)) => Some((
            pem(cert, "the client certificate")?,
            pem(key, "the client key")?,
        )),
        None => None,
    };
    let settings = TlsSettings::new(
        pem(ca, "the CA certificates")?,
        client,
        change.server_name.map(str::to_string),
        change.verify.unwrap_or(Verify::Full),
    )
    .map_err(|e| {
        let given = |file: Option<&Path>| file.map_or(String::new(), |f| f.display().to_string());
        let (option, value) = match e.part {
            Part::Ca => ("--ca", given(Some(ca))),
            Part::Cert => ("--cert", given(change.client.map(|c| c.0))),
            Part::Key => ("--key", given(change.client.map(|c| c.1))),
            Part::ServerName => (
                "--server-name",
                change.server_name.unwrap_or("").to_string(),
            ),
        };
        UsageError(format!("{option} {value}: {}; nothing changed", e.why))
    })?;
    let path = tls::save(&ctx.local.dir, &ctx.local.domain, &settings)?;
    let summary = settings.summary();
    print(
        ctx,
        || json!({"domain": ctx.local.domain.as_str(), "tls": true, "file": path}),
        || {
            format!(
                "domain {}: {}\n",
                ctx.local.domain,
                describe(&summary, &path)
            )
        },
    )?;
    Ok(Exit::Success)
}

/// The settings in one line: `TLS, verify full, 1 CA certificate, a client certificate, in FILE`.
fn describe(s: &tls::Summary, path: &Path) -> String {
    let plural = if s.ca_certificates == 1 { "" } else { "s" };
    let mut text = format!(
        "TLS, verify {}, {} CA certificate{plural}",
        s.verify.as_str(),
        s.ca_certificates
    );
    if let Some(name) = &s.server_name {
        text.push_str(&format!(", server name {name}"));
    }
    if s.client_certificate {
        text.push_str(", a client certificate");
    }
    text.push_str(&format!(", in {}", path.display()));
    text
}
