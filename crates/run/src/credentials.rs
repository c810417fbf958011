//! Registry credentials for pulls, found where the docker CLI keeps them: the file
//! `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`), which names a credential helper
//! for the registry (`credHelpers`), holds an `auths` entry for it, or names the default helper
//! (`credsStore`), in that order. Values are handed to the engine and go nowhere else.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine as _;
use bollard::auth::DockerCredentials;

/// Docker Hub's key in the CLI's configuration.
const HUB: &str = "https://index.docker.io/v1/";

/// The credentials for the registry that `image` names, if the configuration has any.
pub fn for_image(image: &str) -> Option<DockerCredentials> {
    let registry = registry_of(image);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config_file()?).ok()?).ok()?;
    let helper_for = config
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| h.iter().find(|(k, _)| host_of(k) == registry))
        .and_then(|(_, v)| v.as_str());
    if let Some(helper) = helper_for {
        return from_helper(helper, &registry);
    }
    let entry = config
        .get("auths")
        .and_then(|a| a.as_object())
        .and_then(|a| a.iter().find(|(k, _)| host_of(k) == registry))
        .map(|(_, v)| v);
    if let Some(found) = entry.and_then(from_entry) {
        return Some(DockerCredentials {
            serveraddress: Some(server_address(&registry)),
            ..found
        });
    }
    let store = config.get("credsStore").and_then(|s| s.as_str())?;
    from_helper(store, &registry)
}

fn config_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
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
fn from_helper(helper: &str, registry: &str) -> Option<DockerCredentials> {
    let server = server_address(registry);
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(server.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
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
