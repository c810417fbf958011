//! Registry credentials for pulls, found as the docker CLI finds them: the file
//! `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`) names a credential helper for the
//! registry (`credHelpers`), or a default helper for all (`credsStore`), or else holds an
//! `auths` entry for it. Values are handed to the engine and go nowhere else.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use tokio::io::AsyncWriteExt;

/// Docker Hub's key in the CLI's configuration.
const HUB: &str = "https://index.docker.io/v1/";

/// A helper that asks for a passphrase or a keyring unlock may wait for a person: past this,
/// the pull goes ahead without credentials.
const HELPER_TIME: Duration = Duration::from_secs(30);

/// Where the credentials for a registry come from.
#[derive(Debug, PartialEq)]
enum Source {
    /// `docker-credential-<name>`.
    Helper(String),
    Entry(DockerCredentials),
}

/// The credentials for the registry that `image` names, if the configuration has any.
pub async fn for_image(image: &str) -> Option<DockerCredentials> {
    let registry = registry_of(image);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_file()?).ok()?).ok()?;
    match source_for(&config, &registry)? {
        Source::Helper(helper) => from_helper(&helper, &registry).await,
        Source::Entry(found) => Some(DockerCredentials {
            serveraddress: Some(server_address(&registry)),
            ..found
        }),
    }
}

/// The docker CLI's order: a helper for this registry, the default helper, an `auths` entry
/// (its exact key first, then any key for the same host that holds credentials).
fn source_for(config: &serde_json::Value, registry: &str) -> Option<Source> {
    let object = |k: &str| config.get(k).and_then(|v| v.as_object());
    if let Some(helper) = object("credHelpers")
        .and_then(|h| h.iter().find(|(k, _)| host_of(k) == registry))
        .and_then(|(_, v)| v.as_str())
    {
        return Some(Source::Helper(helper.to_owned()));
    }
    if let Some(store) = config
        .get("credsStore")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
    {
        return Some(Source::Helper(store.to_owned()));
    }
    let auths = object("auths")?;
    let exact = auths.get(&server_address(registry)).and_then(from_entry);
    exact
        .or_else(|| {
            auths
                .iter()
                .filter(|(k, _)| host_of(k) == registry)
                .find_map(|(_, v)| from_entry(v))
        })
        .map(Source::Entry)
}

fn config_file() -> Option<PathBuf> {
    // Empty counts as unset, as for the CLI.
    let dir = match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    Some(dir.join("config.json"))
}

/// The registry host of an image reference: its first part when that looks like a host
/// (a dot, a port or `localhost`), else Docker Hub.
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => host_of(first),
        _ => "docker.io".into(),
    }
}

/// A configuration key or registry as a bare host: no scheme, no path, Docker Hub's names
/// made one.
fn host_of(key: &str) -> String {
    let bare = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = bare.split('/').next().unwrap_or(bare);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        other => other.to_owned(),
    }
}

fn server_address(registry: &str) -> String {
    if registry == "docker.io" {
        HUB.into()
    } else {
        registry.into()
    }
}

/// An `auths` entry: `auth` (base64 of `user:password`), or its parts, or an identity token.
fn from_entry(entry: &serde_json::Value) -> Option<DockerCredentials> {
    let text = |k: &str| {
        entry
            .get(k)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (mut username, mut password) = (text("username"), text("password"));
    if let Some(auth) = text("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let (user, pass) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        username = Some(user.to_owned());
        password = Some(pass.to_owned());
    }
    let identitytoken = text("identitytoken");
    (username.is_some() || identitytoken.is_some()).then_some(DockerCredentials {
        username,
        password,
        identitytoken,
        ..Default::default()
    })
}

/// `docker-credential-<helper> get`, given the registry on stdin: `{"Username", "Secret"}`.
async fn from_helper(helper: &str, registry: &str) -> Option<DockerCredentials> {
    let server = server_address(registry);
    let mut child = tokio::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    stdin.write_all(server.as_bytes()).await.ok()?;
    drop(stdin);
    let out = match tokio::time::timeout(HELPER_TIME, child.wait_with_output()).await {
        Ok(out) => out.ok()?,
        Err(_) => {
            tracing::warn!(
                "credential helper {helper} gave no answer for {registry} in {}s; pulling without credentials",
                HELPER_TIME.as_secs()
            );
            return None;
        }
    };
    if !out.status.success() {
        tracing::debug!("credential helper {helper} has nothing for {registry}");
        return None;
    }
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let user = found.get("Username")?.as_str()?.to_owned();
    let secret = found.get("Secret")?.as_str()?.to_owned();
    // A helper that holds an identity token says so with this user name.
    Some(if user == "<token>" {
        DockerCredentials {
            identitytoken: Some(secret),
            serveraddress: Some(server),
            ..Default::default()
        }
    } else {
        DockerCredentials {
            username: Some(user),
            password: Some(secret),
            serveraddress: Some(server),
            ..Default::default()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_of_an_image_is_its_host_or_docker_hub() {
        assert_eq!(registry_of("redis:7"), "docker.io");
        assert_eq!(registry_of("team/tool"), "docker.io");
        assert_eq!(registry_of("ghcr.io/team/tool:1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/tool"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/tool"), "localhost");
        assert_eq!(host_of("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(host_of("https://127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn credentials_are_looked_up_in_the_docker_clis_order() {
        let entry = serde_json::json!({ "auth": "dXNlcjpwYTpzcw==" });
        let user = |s: Option<Source>| match s {
            Some(Source::Entry(c)) => c.username,
            other => panic!("{other:?}"),
        };
        let all = serde_json::json!({
            "credHelpers": { "ghcr.io": "gh" },
            "credsStore": "desktop",
            "auths": { "ghcr.io": entry, "https://index.docker.io/v1/": entry },
        });
        assert_eq!(
            source_for(&all, "ghcr.io"),
            Some(Source::Helper("gh".into()))
        );
        // A default helper wins over an old `auths` entry.
        assert_eq!(
            source_for(&all, "docker.io"),
            Some(Source::Helper("desktop".into()))
        );
        // Docker Hub's exact key first; an empty entry for the same host is passed over.
        let hub = serde_json::json!({ "auths": {
            "docker.io": {},
            "https://index.docker.io/v1/": entry,
        }});
        assert_eq!(user(source_for(&hub, "docker.io")).as_deref(), Some("user"));
        let spread = serde_json::json!({ "auths": {
            "https://127.0.0.1:5000": {},
            "127.0.0.1:5000/v2/": { "identitytoken": "t" },
        }});
        match source_for(&spread, "127.0.0.1:5000") {
            Some(Source::Entry(c)) => assert_eq!(c.identitytoken.as_deref(), Some("t")),
            other => panic!("{other:?}"),
        }
        assert_eq!(source_for(&spread, "ghcr.io"), None);
    }

    #[test]
    fn an_auths_entry_gives_its_user_and_password() {
        let entry = serde_json::json!({ "auth": "dXNlcjpwYTpzcw==" });
        let c = from_entry(&entry).unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("user"), Some("pa:ss"))
        );
        assert!(from_entry(&serde_json::json!({})).is_none());
    }
}
