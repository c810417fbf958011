//! Steps: one-shot commands run one after another before any daemon starts. Part of the pure
//! core: a step is stopped on a signal the way a daemon is ([`Proc::stop`], then SIGKILL after
//! the grace or on a second signal), and killed at once when it outlives its `timeout`.

use std::time::Duration;

use serde_json::json;
use tether_probe::show;
use tether_spec::model::Step;

use crate::core::{
    Action, CodeOf, Event, Exit, Outcome, Proc, SIGINT, SIGTERM, Target, Timer, Unit, emit,
    exit_json, signal_name,
};

/// How the steps ended.
#[derive(Debug, PartialEq)]
pub(crate) enum StepsEnd {
    /// Every step ran: the daemons start.
    Done,
    /// Stop here (a fatal step failed, or a signal stopped a step).
    Finish(Outcome),
}

struct Facts {
    name: String,
    fatal: bool,
    timeout: Option<Duration>,
}

pub(crate) struct Steps {
    steps: Vec<Facts>,
    grace: Duration,
    code_of: CodeOf,
    current: usize,
    proc: Proc,
    began: Duration,
    timed_out: bool,
    /// The signal that stopped the current step.
    stop_signal: Option<i32>,
    /// Signals that came while a finished step's output drained: for whatever runs next.
    pending: Vec<i32>,
}

/// Steps run one at a time, each as run 1 of its unit.
const RUN: u64 = 1;

impl Steps {
    pub fn new(steps: &[Step], grace: Duration, code_of: CodeOf) -> Steps {
        Steps {
            steps: steps
                .iter()
                .map(|s| Facts {
                    name: s.name.clone(),
                    fatal: s.fatal,
                    timeout: s.timeout.map(|t| t.0),
                })
                .collect(),
            grace,
            code_of,
            current: 0,
            proc: Proc::default(),
            began: Duration::ZERO,
            timed_out: false,
            stop_signal: None,
            pending: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Signals still to be handled once the steps are over.
    pub fn take_pending(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.pending)
    }

    pub fn begin(&mut self, out: &mut Vec<Action>) -> Option<StepsEnd> {
        self.start(0, out)
    }

    fn start(&mut self, k: usize, out: &mut Vec<Action>) -> Option<StepsEnd> {
        if k >= self.steps.len() {
            return Some(StepsEnd::Done);
        }
        self.current = k;
        self.proc = Proc::default();
        self.timed_out = false;
        self.stop_signal = None;
        out.push(Action::Spawn {
            unit: Unit::Step(k),
            run: RUN,
        });
        None
    }

    pub fn handle(
        &mut self,
        event: Event,
        now: Duration,
        out: &mut Vec<Action>,
    ) -> Option<StepsEnd> {
        let k = self.current;
        let unit = Unit::Step(k);
        let name = self.steps.get(k)?.name.clone();
        match event {
            Event::Started { unit: u, pid, .. } if u == unit => {
                self.proc = Proc::started(pid);
                self.began = now;
                emit(
                    out,
                    "step-started",
                    Some(&name),
                    format!("step started (pid {pid})"),
                    json!({"pid": pid}),
                );
                if let Some(after) = self.steps[k].timeout {
                    out.push(Action::Arm {
                        unit,
                        run: RUN,
                        timer: Timer::Timeout,
                        after,
                    });
                }
                for s in self.take_pending() {
                    self.signal(s, out);
                }
                None
            }
            Event::SpawnFailed {
                unit: u,
                error,
                why,
                ..
            } if u == unit => {
                let outcome = Outcome::CannotStart {
                    name: name.clone(),
                    error,
                };
                let extra = json!({"code": (self.code_of)(&outcome)});
                if self.steps[k].fatal {
                    let message = format!("{why}; no daemon starts");
                    emit(out, "step-failed", Some(&name), message, extra);
                    return Some(StepsEnd::Finish(outcome));
                }
                let message = format!("{why}; going on (fatal: false)");
                emit(out, "step-failed", Some(&name), message, extra);
                self.start(k + 1, out)
            }
            Event::Reaped { unit: u, .. } if u == unit => {
                self.proc.reaped = true;
                None
            }
            Event::Timer { unit: u, timer, .. } if u == unit && self.proc.live() => {
                if timer == Timer::Timeout {
                    self.timed_out = true;
                }
                self.proc.kill(unit, out);
                None
            }
            Event::Signal(s) => {
                self.signal(s, out);
                None
            }
            Event::SignalsLost => {
                self.proc.kill(unit, out);
                None
            }
            Event::Exited { unit: u, exit, .. } if u == unit => self.exited(k, exit, now, out),
            _ => None,
        }
    }

    fn signal(&mut self, s: i32, out: &mut Vec<Action>) {
        let unit = Unit::Step(self.current);
        if !self.proc.live() {
            self.pending.push(s);
            return;
        }
        match s {
            SIGTERM | SIGINT if self.stop_signal.is_some() => {
                self.proc.kill(unit, out);
            }
            SIGTERM | SIGINT => {
                let message = format!(
                    "received {}; stopping step {}",
                    signal_name(s),
                    self.steps[self.current].name
                );
                emit(out, "stopping", None, message, json!({}));
                self.proc.stop(unit, RUN, s, self.grace, out);
                self.stop_signal = Some(s);
            }
            other => out.push(Action::Signal {
                unit,
                signal: other,
                target: Target::Group,
            }),
        }
    }

    fn exited(
        &mut self,
        k: usize,
        exit: Exit,
        now: Duration,
        out: &mut Vec<Action>,
    ) -> Option<StepsEnd> {
        let unit = Unit::Step(k);
        out.push(Action::Cancel { unit });
        self.proc = Proc::default();
        let step = &self.steps[k];
        let name = step.name.clone();
        if let Some(sig) = self.stop_signal {
            let clean =
                exit == Exit::Signal(sig) || exit == Exit::Code(0) || exit == Exit::Code(128 + sig);
            return Some(StepsEnd::Finish(if clean {
                Outcome::Clean
            } else {
                Outcome::Failed { name, exit }
            }));
        }
        let took = show(now.saturating_sub(self.began));
        if exit == Exit::Code(0) && !self.timed_out {
            let message = format!("step completed in {took}");
            emit(out, "step-completed", Some(&name), message, json!({}));
            return self.start(k + 1, out);
        }
        let what = if self.timed_out {
            format!(
                "step timed out after {}",
                show(step.timeout.unwrap_or_default())
            )
        } else {
            format!("step failed: {}", exit.describe())
        };
        let extra = json!({"exit": exit_json(exit)});
        if step.fatal {
            let message = format!("{what}; no daemon starts (fatal step)");
            emit(out, "step-failed", Some(&name), message, extra);
            return Some(StepsEnd::Finish(Outcome::StepFailed { step: name }));
        }
        let message = format!("{what}; going on (fatal: false)");
        emit(out, "step-failed", Some(&name), message, extra);
        self.start(k + 1, out)
    }
}
