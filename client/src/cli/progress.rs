//! Showing a watch as it happens. On a terminal (human output), a live line
//! redrawn in place: the object count, the time since the last activity, the
//! quiet window filling up, the unchanged samples `k/N` of a polling watch;
//! the events that matter (started, the end, reopened) print above it.
//! Elsewhere, one plain line (or one JSON object) per event.

use std::{
    cell::RefCell,
    io::{self, IsTerminal, Write},
    time::{Duration, SystemTime},
};

use futures::StreamExt;
use streamwatch_client::{
    Client, is_terminal,
    proto::{self as v1, WatchState, policy::Rule, watch_event::Kind},
};

use super::{
    Format,
    output::{EventJson, Printer, event_line, human_duration, std_duration, system_time},
};

/// How often the live line is redrawn.
const REDRAW_EVERY: Duration = Duration::from_millis(100);
/// Width of the quiet-window bar.
const BAR_WIDTH: usize = 20;

/// What the live line shows, kept up to date from the events.
#[derive(Debug, Default)]
pub struct Progress {
    rule: Option<Rule>,
    objects: u64,
    notifications: u64,
    last_activity: Option<SystemTime>,
    since: Option<SystemTime>,
    repeated: u32,
    max_repeats: u32,
    active: bool,
}

impl Progress {
    pub fn new(watch: &v1::Watch) -> Self {
        let rule = watch.policy.as_ref().and_then(|p| p.rule.clone());
        let max_repeats = match &rule {
            Some(Rule::Polling(p)) => p.max_repeats,
            _ => 0,
        };
        Self {
            rule,
            objects: watch.object_count,
            notifications: watch.event_count,
            last_activity: watch.last_activity_at.as_ref().and_then(system_time),
            since: watch.created_at.as_ref().and_then(system_time),
            repeated: 0,
            max_repeats,
            active: watch.state() == WatchState::Active,
        }
    }

    pub fn apply(&mut self, event: &v1::WatchEvent) {
        match &event.kind {
            Some(Kind::Started(started)) => {
                if let Some(watch) = &started.watch {
                    *self = Self::new(watch);
                }
            }
            Some(Kind::Progress(p)) => {
                self.objects = p.object_count;
                self.notifications = p.event_count;
                self.last_activity = p.last_activity_at.as_ref().and_then(system_time);
                self.repeated = 0;
            }
            Some(Kind::QuietTick(t)) => {
                self.objects = t.object_count;
                self.repeated = t.repeated;
                self.max_repeats = t.max_repeats;
            }
            Some(Kind::Reopened(r)) => {
                self.objects = r.object_count;
                self.since = event.time.as_ref().and_then(system_time);
                self.repeated = 0;
                self.active = true;
            }
            Some(Kind::Completed(_) | Kind::TimedOut(_) | Kind::Cancelled(_)) => {
                self.active = false;
            }
            Some(Kind::DeliveryFailed(_)) | None => {}
        }
    }

    /// The live line at `now`.
    pub fn line(&self, now: SystemTime) -> String {
        let quiet_since = self.last_activity.max(self.since);
        let idle = quiet_since
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        let mut parts = vec![match &self.rule {
            Some(Rule::ExpectedCount(r)) => format!("objects {}/{}", self.objects, r.objects),
            _ => format!("objects {}", self.objects),
        }];
        parts.push(match self.last_activity {
            Some(_) => format!("last activity {} ago", human_duration(idle)),
            None => format!("no activity for {}", human_duration(idle)),
        });
        let window = match &self.rule {
            Some(Rule::QuietPeriod(r)) => std_duration(r.window.as_ref()),
            Some(Rule::ExpectedCount(r)) => std_duration(r.quiet_window.as_ref()),
            Some(Rule::Marker(r)) => std_duration(r.quiet_window.as_ref()),
            _ => None,
        };
        if let Some(window) = window {
            parts.push(format!(
                "quiet {} {}/{}",
                bar(idle, window),
                human_duration(idle.min(window)),
                human_duration(window)
            ));
        }
        if let Some(Rule::Polling(_)) = &self.rule {
            parts.push(format!("unchanged {}/{}", self.repeated, self.max_repeats));
        }
        parts.join("  ·  ")
    }
}

fn bar(filled: Duration, of: Duration) -> String {
    let fraction = if of.is_zero() {
        1.0
    } else {
        (filled.as_secs_f64() / of.as_secs_f64()).min(1.0)
    };
    let full = (fraction * BAR_WIDTH as f64).round() as usize;
    format!("[{}{}]", "#".repeat(full), ".".repeat(BAR_WIDTH - full))
}

/// Prints a followed watch: live on a terminal, line by line elsewhere.
pub struct Follower {
    printer: Printer,
    live: bool,
    progress: Progress,
    line_shown: bool,
}

impl Follower {
    pub fn new(printer: Printer, watch: &v1::Watch) -> Self {
        Self {
            printer,
            live: printer.format == Format::Human && io::stdout().is_terminal(),
            progress: Progress::new(watch),
            line_shown: false,
        }
    }

    /// Prints the watch's events after `after_seq` until its stream ends.
    pub async fn follow(
        &mut self,
        client: &Client,
        watch_id: &str,
        after_seq: u64,
    ) -> anyhow::Result<()> {
        let mut events = client.subscribe(watch_id, after_seq);
        let mut redraw = tokio::time::interval(REDRAW_EVERY);
        loop {
            tokio::select! {
                next = events.next() => match next {
                    Some(Ok(event)) => self.event(&event)?,
                    Some(Err(error)) => {
                        self.clear()?;
                        return Err(error.into());
                    }
                    None => break,
                },
                _ = redraw.tick(), if self.live => self.redraw()?,
            }
        }
        self.clear()?;
        Ok(())
    }

    /// Prints the watch's events until it ends (see
    /// [`Client::wait_for_completion`]); returns the watch as it ended.
    pub async fn wait(&mut self, client: &mut Client, watch_id: &str) -> anyhow::Result<v1::Watch> {
        let this = RefCell::new(self);
        let live = this.borrow().live;
        let mut print_error = None;
        let ended = {
            let wait = client.wait_for_completion_with(watch_id, |event| {
                if let Err(error) = this.borrow_mut().event(event) {
                    print_error.get_or_insert(error);
                }
            });
            tokio::pin!(wait);
            let mut redraw = tokio::time::interval(REDRAW_EVERY);
            loop {
                tokio::select! {
                    ended = &mut wait => break ended,
                    _ = redraw.tick(), if live => this.borrow_mut().redraw()?,
                }
            }
        };
        this.borrow_mut().clear()?;
        if let Some(error) = print_error {
            return Err(error.into());
        }
        Ok(ended?)
    }

    fn event(&mut self, event: &v1::WatchEvent) -> io::Result<()> {
        self.progress.apply(event);
        if self.printer.format == Format::Json {
            return self.printer.json(&EventJson::new(event));
        }
        if !self.live {
            return self.printer.line(&event_line(event));
        }
        let quiet = matches!(event.kind, Some(Kind::Progress(_) | Kind::QuietTick(_)));
        if !quiet || is_terminal(event) {
            self.clear()?;
            self.printer.line(&event_line(event))?;
        }
        self.redraw()
    }

    fn redraw(&mut self) -> io::Result<()> {
        if !self.live || !self.progress.active {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        write!(out, "\r{}\x1b[K", self.progress.line(SystemTime::now()))?;
        self.line_shown = true;
        out.flush()
    }

    fn clear(&mut self) -> io::Result<()> {
        if !self.line_shown {
            return Ok(());
        }
        self.line_shown = false;
        let mut out = io::stdout().lock();
        write!(out, "\r\x1b[K")?;
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn stamp(t: SystemTime) -> prost_types::Timestamp {
        prost_types::Timestamp::from(t)
    }

    fn quiet_watch(window: u64) -> v1::Watch {
        v1::Watch {
            state: WatchState::Active as i32,
            created_at: Some(stamp(at(0))),
            policy: Some(v1::Policy {
                rule: Some(Rule::QuietPeriod(v1::QuietPeriodRule {
                    window: Some(prost_types::Duration {
                        seconds: window as i64,
                        nanos: 0,
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_quiet_window_fills_from_the_last_activity() {
        let mut progress = Progress::new(&quiet_watch(4));
        progress.apply(&v1::WatchEvent {
            seq: 2,
            kind: Some(Kind::Progress(v1::watch_event::Progress {
                object_count: 7,
                event_count: 8,
                removed_count: 0,
                last_activity_at: Some(stamp(at(10))),
                object_bytes: 7 * 1024,
            })),
            ..Default::default()
        });
        assert_eq!(
            progress.line(at(12)),
            "objects 7  ·  last activity 2s ago  ·  quiet [##########..........] 2s/4s"
        );
        assert_eq!(
            progress.line(at(30)),
            "objects 7  ·  last activity 20s ago  ·  quiet [####################] 4s/4s"
        );
    }

    #[test]
    fn a_polling_watch_counts_unchanged_samples() {
        let mut watch = quiet_watch(1);
        watch.policy = Some(v1::Policy {
            rule: Some(Rule::Polling(v1::PollingRule {
                delay: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                max_repeats: 3,
                schedule: 0,
            })),
            ..Default::default()
        });
        let mut progress = Progress::new(&watch);
        progress.apply(&v1::WatchEvent {
            kind: Some(Kind::QuietTick(v1::watch_event::QuietTick {
                object_count: 0,
                repeated: 2,
                max_repeats: 3,
            })),
            ..Default::default()
        });
        assert_eq!(
            progress.line(at(5)),
            "objects 0  ·  no activity for 5s  ·  unchanged 2/3"
        );
    }
}
