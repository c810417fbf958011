//! `tether render`: the same declaration as files the existing engines run natively. Pure:
//! same input, same bytes.

pub mod compose;
pub mod kubernetes;

/// The workload's image (if declared) and the plan both renderers start from: the workload as
/// a container of that image.
pub(crate) fn workload_plan(
    decl: &tether_spec::model::Declaration,
    session: &str,
) -> Result<(Option<String>, tether_plan::Plan), RenderError> {
    let image = decl.workload.as_ref().and_then(|w| w.image.clone());
    let argv = tether_plan::declared_workload(decl)
        .unwrap_or_else(|| ["docker", "run", "workload"].map(String::from).to_vec());
    let plan =
        tether_plan::plan(decl, session, &argv).map_err(|e| RenderError::Plan(e.to_string()))?;
    Ok((image, plan))
}

/// The key under which secret `name` of sidecar `c` is rendered (a key of the Kubernetes Secret,
/// a top-level secret of the Compose file): `SIDECAR-NAME` of the first sidecar (in the plan's
/// order) that declares a secret read from the same source, so that a value two sidecars read
/// from one file or variable is rendered once and mounted in both. Two sources whose keys would
/// be one (sidecar `a`'s secret `b-t`, sidecar `a-b`'s `t`) keep a key each: the later one's
/// gets `-2` (or the next number free).
pub(crate) fn secret_key(
    plan: &tether_plan::Plan,
    c: &tether_plan::ContainerPlan,
    name: &str,
) -> String {
    let mut keys: Vec<(&tether_spec::model::SecretSource, String)> = Vec::new();
    for o in &plan.sidecars {
        for s in &o.secrets {
            let key = match keys.iter().find(|(from, _)| **from == s.from) {
                Some((_, key)) => key.clone(),
                None => {
                    let base = format!("{}-{}", o.sidecar, s.name);
                    let mut key = base.clone();
                    let mut n = 2;
                    while keys.iter().any(|(_, k)| *k == key) {
                        key = format!("{base}-{n}");
                        n += 1;
                    }
                    keys.push((&s.from, key.clone()));
                    key
                }
            };
            if o.sidecar == c.sidecar && s.name == name {
                return key;
            }
        }
    }
    format!("{}-{name}", c.sidecar)
}

/// Why a declaration cannot be rendered.
#[derive(Debug, PartialEq, Eq)]
pub enum RenderError {
    /// A field that the target cannot express, or that it needs and is missing.
    Field {
        owner: String,
        field: String,
        message: String,
    },
    Plan(String),
    /// Things the target cannot express, refused without `--allow-lossy`.
    Lossy(Vec<Loss>),
}

/// Something of the declaration a target cannot keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    /// `sidecars.db`, `workload`, `init.health`.
    pub owner: String,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}: {}", self.owner, self.field, self.message)
    }
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::Field {
                owner,
                field,
                message,
            } => write!(f, "{owner}: {field}: {message}"),
            RenderError::Plan(m) => write!(f, "{m}"),
            RenderError::Lossy(losses) => {
                write!(
                    f,
                    "{} thing(s) cannot be rendered faithfully:",
                    losses.len()
                )?;
                for l in losses {
                    write!(f, "\n  {l}")?;
                }
                write!(
                    f,
                    "\n  = hint: --allow-lossy renders anyway and lists each loss"
                )
            }
        }
    }
}

impl std::error::Error for RenderError {}
