//! How far the notification queues have caught up ([`Watermarks`]), and the
//! instants decisions want them settled past. The queue consumers
//! ([`super::sqs`]) advance the marks; the observer reads the settled
//! instant and says what it wants. No I/O, no clock: instants come in.

use std::{collections::BTreeMap, sync::Mutex};

use crate::clock::Timestamp;

/// How far each notification queue has caught up: every notification sent
/// to it before its mark has been recorded. With no queues nothing can be in
/// flight outside the process, and the settled instant is [`Timestamp::MAX`].
///
/// It also holds the instants decisions will want the queues settled past
/// (quiet deadlines, polling samples, held decisions: the observer keeps
/// them), so a consumer ends its long poll by the next one and confirms
/// with a short receive started after it, instead of a long poll that only
/// comes back after its full wait.
pub struct Watermarks {
    queues: Mutex<Vec<Option<Timestamp>>>,
    settled: tokio::sync::watch::Sender<Timestamp>,
    /// Wanted instants, with how many watches want each.
    wanted: Mutex<BTreeMap<Timestamp, usize>>,
}

impl Watermarks {
    pub fn new(queues: usize) -> Self {
        let initial = if queues == 0 {
            Timestamp::MAX
        } else {
            Timestamp::from_millis(0)
        };
        Self {
            queues: Mutex::new(vec![None; queues]),
            settled: tokio::sync::watch::channel(initial).0,
            wanted: Mutex::new(BTreeMap::new()),
        }
    }

    /// One watch's wanted instant moves from `from` to `to` (either may be none).
    pub fn rewant(&self, from: Option<Timestamp>, to: Option<Timestamp>) {
        if from == to {
            return;
        }
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(from) = from
            && let Some(n) = wanted.get_mut(&from)
        {
            *n -= 1;
            if *n == 0 {
                wanted.remove(&from);
            }
        }
        if let Some(to) = to {
            *wanted.entry(to).or_default() += 1;
        }
    }

    /// The earliest instant a decision wants settled (passed already while
    /// a decision waits for it or is about to be made again).
    pub fn next_wanted(&self) -> Option<Timestamp> {
        let wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        wanted.keys().next().copied()
    }

    /// Follows the settled instant (the lowest mark over all queues).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Timestamp> {
        self.settled.subscribe()
    }

    pub fn settled_until(&self) -> Timestamp {
        *self.settled.borrow()
    }

    /// Queue `queue` has caught up to `to` (marks only move forward).
    pub fn advance(&self, queue: usize, to: Timestamp) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mark) = queues.get_mut(queue) else {
            return;
        };
        if mark.is_some_and(|m| m >= to) {
            return;
        }
        *mark = Some(to);
        let settled = queues
            .iter()
            .map(|m| m.unwrap_or(Timestamp::from_millis(0)))
            .min()
            .unwrap_or(Timestamp::MAX);
        self.settled.send_if_modified(|current| {
            let changed = *current != settled;
            *current = settled;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_learn_the_earliest_instant_a_decision_wants() {
        let marks = Watermarks::new(1);
        let at = Timestamp::from_millis;
        assert_eq!(marks.next_wanted(), None);
        marks.rewant(None, Some(at(5_000)));
        marks.rewant(None, Some(at(5_000)));
        marks.rewant(None, Some(at(9_000)));
        assert_eq!(marks.next_wanted(), Some(at(5_000)));
        // One of the two watches at 5s moves on; the other still wants 5s.
        marks.rewant(Some(at(5_000)), Some(at(12_000)));
        assert_eq!(marks.next_wanted(), Some(at(5_000)));
        marks.rewant(Some(at(5_000)), None);
        assert_eq!(marks.next_wanted(), Some(at(9_000)));
        marks.rewant(Some(at(9_000)), None);
        marks.rewant(Some(at(12_000)), None);
        assert_eq!(marks.next_wanted(), None);
    }
}
