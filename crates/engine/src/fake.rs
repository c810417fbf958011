//! An in-memory engine that records every call, for fast orchestration tests. Containers
//! "run" as soon as they start; readiness answers are scripted per container name.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use tether_plan::ContainerPlan;

use crate::{Container, Engine, EngineError, FileCopy, Result};

#[derive(Default)]
struct State {
    images: BTreeMap<String, String>,
    networks: BTreeSet<String>,
    /// Name → the container and, when tether made it, its plan.
    containers: BTreeMap<String, (Container, Option<ContainerPlan>)>,
    /// Container names whose readiness never passes.
    never_ready: BTreeSet<String>,
    /// Container names that exit as soon as they start.
    crashing: BTreeSet<String>,
    /// Container names the engine refuses to start.
    unstartable: BTreeSet<String>,
    calls: Vec<String>,
    next_id: u64,
    unreachable: bool,
    /// The engine runs elsewhere: it cannot see this host's files.
    remote: bool,
    /// Images a pull finds: name → the ID it gets.
    registry: BTreeMap<String, String>,
    /// (container name, path) → what was copied there.
    files: BTreeMap<(String, String), Vec<u8>>,
}

#[derive(Default)]
pub struct FakeEngine {
    state: Mutex<State>,
}

impl FakeEngine {
    pub fn new() -> FakeEngine {
        FakeEngine::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn add_image(&self, name: &str, id: &str) {
        self.with(|s| s.images.insert(name.into(), id.into()));
    }

    /// An image its registry has: pulling it gives it this ID (and a pulled image with a new
    /// ID is a moved tag).
    pub fn in_registry(&self, name: &str, id: &str) {
        self.with(|s| s.registry.insert(name.into(), id.into()));
    }

    /// An engine on another machine: secrets are copied in, not bound.
    pub fn remote(&self) {
        self.with(|s| s.remote = true);
    }

    /// What was copied to `path` in the container.
    pub fn file(&self, container: &str, path: &str) -> Option<Vec<u8>> {
        self.with(|s| s.files.get(&(container.into(), path.into())).cloned())
    }

    /// A network someone else made.
    pub fn add_network(&self, name: &str) {
        self.with(|s| s.networks.insert(name.into()));
    }

    pub fn never_ready(&self, container: &str) {
        self.with(|s| s.never_ready.insert(container.into()));
    }

    pub fn crashing(&self, container: &str) {
        self.with(|s| s.crashing.insert(container.into()));
    }

    pub fn unstartable(&self, container: &str) {
        self.with(|s| s.unstartable.insert(container.into()));
    }

    pub fn unreachable(&self) {
        self.with(|s| s.unreachable = true);
    }

    /// A container made by someone else, with this name and no labels.
    pub fn foreign(&self, name: &str, image: &str) {
        self.with(|s| {
            s.next_id += 1;
            let c = Container {
                id: format!("{:012x}", s.next_id),
                name: name.into(),
                image: image.into(),
                state: "running".into(),
                ..Default::default()
            };
            s.containers.insert(name.into(), (c, None));
        });
    }

    /// Stops a container as if it had exited.
    pub fn kill(&self, name: &str) {
        self.with(|s| {
            if let Some((c, _)) = s.containers.get_mut(name) {
                c.state = "exited".into();
                c.exit_code = Some(137);
            }
        });
    }

    /// Every call so far, as `verb target`.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// The calls that change something (create, start, stop, remove, network, connect, upload,
    /// pull).
    pub fn changes(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| {
                [
                    "create ", "start ", "stop ", "remove ", "network ", "connect ", "upload ",
                    "pull ",
                ]
                .iter()
                .any(|p| c.starts_with(p))
            })
            .collect()
    }

    pub fn clear_calls(&self) {
        self.with(|s| s.calls.clear());
    }

    /// A container tether made, with the plan it was made from.
    pub fn container(&self, name: &str) -> Option<(Container, ContainerPlan)> {
        self.with(|s| {
            s.containers
                .get(name)
                .and_then(|(c, p)| Some((c.clone(), p.clone()?)))
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.with(|s| s.containers.keys().cloned().collect())
    }

    fn call(&self, text: String) -> Result<()> {
        self.with(|s| {
            s.calls.push(text);
            if s.unreachable {
                Err(EngineError::Unreachable {
                    endpoint: "fake://".into(),
                    reason: "connection refused".into(),
                })
            } else {
                Ok(())
            }
        })
    }

    fn find<'a>(s: &'a mut State, id: &str) -> Option<&'a mut (Container, Option<ContainerPlan>)> {
        s.containers
            .values_mut()
            .find(|(c, _)| c.id == id || c.name == id)
    }
}

impl Engine for FakeEngine {
    fn endpoint(&self) -> String {
        "fake://".into()
    }

    async fn ping(&self) -> Result<String> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call("ping".into())?;
        Ok("1.41".into())
    }

    async fn image_id(&self, image: &str) -> Result<String> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("image {image}"))?;
        self.with(|s| s.images.get(image).cloned())
            .ok_or_else(|| EngineError::NoImage {
                image: image.into(),
            })
    }

    async fn pull(&self, image: &str, progress: &(dyn Fn(u8) + Sync)) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("pull {image}"))?;
        let Some(id) = self.with(|s| s.registry.get(image).cloned()) else {
            return Err(EngineError::PullFailed {
                image: image.into(),
                reason: "manifest unknown".into(),
            });
        };
        progress(50);
        tokio::task::yield_now().await;
        progress(100);
        self.with(|s| s.images.insert(image.into(), id));
        Ok(())
    }

    async fn ensure_network(&self, name: &str, _labels: &BTreeMap<String, String>) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        if self.with(|s| s.networks.contains(name)) {
            return Ok(());
        }
        self.call(format!("network {name}"))?;
        self.with(|s| s.networks.insert(name.into()));
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("network-remove {name}"))?;
        self.with(|s| s.networks.remove(name));
        Ok(())
    }

    async fn connect(&self, id: &str, network: &str, _aliases: &[String]) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        if !self.with(|s| s.networks.contains(network)) {
            return Err(EngineError::NotFound {
                what: format!("the network `{network}`"),
            });
        }
        let name = self.with(|s| {
            let (c, _) = Self::find(s, id)?;
            let address = format!("10.1.0.{}", c.addresses.len() + 2);
            c.addresses.entry(network.to_owned()).or_insert(address);
            Some(c.name.clone())
        });
        let Some(name) = name else {
            return Err(EngineError::NotFound {
                what: format!("the container {id}"),
            });
        };
        self.call(format!("connect {name} {network}"))
    }

    async fn inspect(&self, name_or_id: &str) -> Result<Option<Container>> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("inspect {name_or_id}"))?;
        Ok(self.with(|s| Self::find(s, name_or_id).map(|(c, _)| c.clone())))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call("list".into())?;
        Ok(self.with(|s| {
            s.containers
                .values()
                .filter(|(c, _)| {
                    labels
                        .iter()
                        .all(|(k, v)| c.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|(c, _)| c.clone())
                .collect()
        }))
    }

    async fn create(&self, spec: &ContainerPlan) -> Result<String> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("create {}", spec.name))?;
        self.with(|s| {
            if s.containers.contains_key(&spec.name) {
                return Err(EngineError::NameTaken {
                    name: spec.name.clone(),
                });
            }
            let Some(image_id) = s.images.get(&spec.image).cloned() else {
                return Err(EngineError::NoImage {
                    image: spec.image.clone(),
                });
            };
            s.next_id += 1;
            let id = format!("{:012x}", s.next_id);
            let c = Container {
                id: id.clone(),
                name: spec.name.clone(),
                image: image_id,
                labels: spec.labels.clone(),
                state: "created".into(),
                created: format!("t{}", s.next_id),
                ..Default::default()
            };
            s.containers
                .insert(spec.name.clone(), (c, Some(spec.clone())));
            Ok(id)
        })
    }

    async fn start(&self, id: &str) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("start {}", self.name_of(id)))?;
        self.with(|s| {
            let crashing = s.crashing.clone();
            let unstartable = s.unstartable.clone();
            let (c, spec) = Self::find(s, id).ok_or_else(|| EngineError::NotFound {
                what: format!("container {id}"),
            })?;
            if unstartable.contains(&c.name) {
                return Err(EngineError::Refused {
                    what: format!("start container {}", c.name),
                    reason: "no GPU runtime (HTTP 500)".into(),
                });
            }
            if crashing.contains(&c.name) {
                c.state = "exited".into();
                c.exit_code = Some(1);
                return Ok(());
            }
            c.state = "running".into();
            if let Some(spec) = spec {
                c.addresses
                    .insert(spec.network.clone(), format!("10.0.0.{}", spec.name.len()));
                for (i, p) in spec.publish.iter().enumerate() {
                    c.published.insert(*p, 40000 + i as u16);
                }
            }
            Ok(())
        })
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("stop {}", self.name_of(id)))?;
        self.with(|s| {
            if let Some((c, _)) = Self::find(s, id) {
                c.state = "exited".into();
            }
        });
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("remove {}", self.name_of(id)))?;
        self.with(|s| s.containers.retain(|_, (c, _)| c.id != id && c.name != id));
        Ok(())
    }

    async fn exec(&self, id: &str, command: &[String]) -> Result<(i64, String)> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("exec {} {}", self.name_of(id), command.join(" ")))?;
        let ready = self.ready(id);
        Ok(if ready {
            (0, String::new())
        } else {
            (1, "not yet".into())
        })
    }

    /// What `logs` gives, as one chunk; with `follow`, the stream then stays open, as a running
    /// container's does.
    fn output(&self, id: &str, follow: bool, _tail: Option<usize>) -> crate::Output {
        use futures_util::StreamExt;
        let called = self.call(format!("output {}", self.name_of(id)));
        let text = if self.ready(id) {
            "booting\nready to accept connections\n"
        } else {
            "booting\n"
        };
        let first = called.map(|()| crate::Chunk::Stdout(text.as_bytes().to_vec()));
        let once = futures_util::stream::once(async move { first });
        if follow {
            once.chain(futures_util::stream::pending()).boxed()
        } else {
            once.boxed()
        }
    }

    async fn logs(&self, id: &str, _tail: usize) -> Result<Vec<String>> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        self.call(format!("logs {}", self.name_of(id)))?;
        Ok(if self.ready(id) {
            vec!["booting".into(), "ready to accept connections".into()]
        } else {
            vec!["booting".into()]
        })
    }

    async fn reachable(
        &self,
        container: &Container,
        _network: &str,
        port: u16,
        path: Option<&str>,
    ) -> Result<bool> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        match path {
            None => self.call(format!("dial {}:{port}", container.name))?,
            Some(path) => self.call(format!("http {}:{port}{path}", container.name))?,
        }
        Ok(self.ready(&container.id))
    }

    async fn shares_files(&self) -> bool {
        !self.with(|s| s.remote)
    }

    async fn ports_here(&self) -> bool {
        !self.with(|s| s.remote)
    }

    async fn upload(&self, id: &str, dir: &str, files: &[FileCopy]) -> Result<()> {
        // Every call is a point where another run can interleave, as with a real engine.
        tokio::task::yield_now().await;
        let name = self.name_of(id);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        self.call(format!("upload {name} {dir}/{{{}}}", names.join(",")))?;
        self.with(|s| {
            for (file, bytes) in files {
                s.files
                    .insert((name.clone(), format!("{dir}/{file}")), bytes.clone());
            }
        });
        Ok(())
    }
}

impl FakeEngine {
    fn name_of(&self, id: &str) -> String {
        self.with(|s| {
            Self::find(s, id)
                .map(|(c, _)| c.name.clone())
                .unwrap_or_else(|| id.to_owned())
        })
    }

    fn ready(&self, id: &str) -> bool {
        self.with(|s| {
            let never = s.never_ready.clone();
            Self::find(s, id).is_some_and(|(c, _)| c.running() && !never.contains(&c.name))
        })
    }
}
