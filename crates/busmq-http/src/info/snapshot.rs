//! What `/info` shows: the state of the whole bus read through the SDK's
//! listings ([`collect`]), message rates from two successive readings
//! ([`Rates`]), and one viewer's slice of it ([`View`], [`Bus::view`]).

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use busmq_client::{Bus, ListQueues, ListedChannel, ListedQueue, MAX_LIST_LIMIT};
use serde::Serialize;

/// Most queues one reading walks: a bus with more shows the first this
/// many in name order, and says it was cut.
pub const MAX_QUEUES: usize = 100_000;

/// Most channels one reading lists (one page).
pub const MAX_CHANNELS: u32 = MAX_LIST_LIMIT;

/// Queues a view shows when it names no limit: the top by depth.
pub const DEFAULT_TOP: usize = 100;

/// Most queues one view shows at once.
pub const MAX_TOP: usize = 1000;

/// One queue as `/info` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueRow {
    /// The queue's name.
    pub name: String,
    /// Messages stored (depth).
    pub count: u64,
    /// Delivered in reliable mode and not acked.
    pub pending: u64,
    /// Leased to lease-mode consumers and not settled.
    pub leased: u64,
    /// Attachments of every client (consumers and producers).
    pub attachments: u64,
    /// Whether a reliable consumer holds the queue.
    pub reliable_consumer: bool,
    /// Messages pushed since the queue was created.
    pub pushed: u64,
    /// Messages taken since the queue was created.
    pub consumed: u64,
    /// Messages pushed per second over the last interval.
    pub in_rate: f64,
    /// Messages taken per second over the last interval.
    pub out_rate: f64,
}

/// One channel as `/info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelRow {
    /// The channel's name.
    pub name: String,
    /// Subscriptions to it right now.
    pub subscribers: u64,
}

/// One reading of the whole bus, shared by every viewer of an interval.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was read, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Every queue, ordered by depth (deepest first), then name.
    pub queues: Vec<QueueRow>,
    /// The channels with subscribers, by name.
    pub channels: Vec<ChannelRow>,
    /// Whether the bus had more queues than [`MAX_QUEUES`] or channels
    /// than [`MAX_CHANNELS`].
    pub truncated: bool,
    /// Why the bus could not be read, if it could not.
    pub error: Option<String>,
}

/// The counters of each queue at the previous reading, for rates. Holds
/// only the queues of the latest reading (replaced whole each time), so it
/// is bounded by [`MAX_QUEUES`].
#[derive(Debug, Default)]
pub struct Rates {
    previous: HashMap<String, (u64, u64)>,
    at: Option<Instant>,
}

impl Rates {
    /// Rows for `listed` read at `now`, with their rates against the
    /// previous reading; then this reading becomes the previous one. A
    /// queue new since then (or re-created, its counters lower) has rate 0.
    pub fn rows(&mut self, listed: Vec<ListedQueue>, now: Instant) -> Vec<QueueRow> {
        let secs = self
            .at
            .map(|at| now.duration_since(at).as_secs_f64())
            .filter(|s| *s > 0.0);
        let mut next = HashMap::with_capacity(listed.len());
        let rows = listed
            .into_iter()
            .map(|q| {
                let i = q.info;
                let rate = |now: u64, before: Option<u64>| match (before, secs) {
                    (Some(b), Some(s)) if now >= b => (now - b) as f64 / s,
                    _ => 0.0,
                };
                let before = self.previous.get(&q.name);
                let row = QueueRow {
                    in_rate: rate(i.pushed, before.map(|b| b.0)),
                    out_rate: rate(i.consumed, before.map(|b| b.1)),
                    count: i.count,
                    pending: i.pending,
                    leased: i.leased,
                    attachments: i.attachments,
                    reliable_consumer: i.reliable_consumer,
                    pushed: i.pushed,
                    consumed: i.consumed,
                    name: q.name,
                };
                next.insert(row.name.clone(), (i.pushed, i.consumed));
                row
            })
            .collect();
        self.previous = next;
        self.at = Some(now);
        rows
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Reads the whole bus once: every queue (up to [`MAX_QUEUES`], page by
/// page), the channels, rates against the previous reading in `rates`.
pub async fn collect(bus: &Bus, rates: &mut Rates) -> Snapshot {
    let mut snapshot = Snapshot {
        at_ms: now_ms(),
        ..Snapshot::default()
    };
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = bus
            .list_queues(ListQueues {
                filter: None,
                after,
                limit: Some(MAX_LIST_LIMIT),
            })
            .await;
        match page {
            Ok(page) => {
                listed.extend(page.queues);
                after = page.next_after;
            }
            Err(e) => {
                snapshot.error = Some(e.to_string());
                return snapshot;
            }
        }
        if after.is_none() {
            break;
        }
        if listed.len() >= MAX_QUEUES {
            listed.truncate(MAX_QUEUES);
            snapshot.truncated = true;
            break;
        }
    }
    let mut queues = rates.rows(listed, Instant::now());
    queues.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    snapshot.queues = queues;
    let channels = bus
        .list_channels(ListQueues {
            limit: Some(MAX_CHANNELS),
            ..ListQueues::default()
        })
        .await;
    match channels {
        Ok(page) => {
            snapshot.truncated |= page.next_after.is_some();
            snapshot.channels = page
                .channels
                .into_iter()
                .map(|ListedChannel { name, subscribers }| ChannelRow { name, subscribers })
                .collect();
        }
        Err(e) => snapshot.error = Some(e.to_string()),
    }
    snapshot
}

/// Which part of a [`Snapshot`] one viewer sees: `?filter=&top=&page=`.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Only queues and channels whose name contains this text.
    pub filter: String,
    /// Queues a page shows, by depth: 1 to [`MAX_TOP`], [`DEFAULT_TOP`]
    /// when unset or 0.
    pub top: usize,
    /// Which page of `top` queues, from 0.
    pub page: usize,
}

/// Sums over every queue of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    queues: usize,
    messages: u64,
    pending: u64,
    leased: u64,
    attachments: u64,
    in_rate: f64,
    out_rate: f64,
    channels: usize,
    subscribers: u64,
}

/// One viewer's slice of a snapshot, as `/info.json` and each
/// `/info/events` event carry it.
#[derive(Debug, Clone, Serialize)]
pub struct Shown<'a> {
    at_ms: u64,
    error: Option<&'a str>,
    truncated: bool,
    /// Over the whole bus, not only the filter's.
    totals: Totals,
    filter: &'a str,
    /// Queues the filter admits.
    matched: usize,
    page: usize,
    pages: usize,
    top: usize,
    queues: Vec<&'a QueueRow>,
    channels: Vec<&'a ChannelRow>,
}

impl Snapshot {
    /// Sums over every queue and channel.
    fn totals(&self) -> Totals {
        let mut t = Totals {
            queues: self.queues.len(),
            channels: self.channels.len(),
            ..Totals::default()
        };
        for q in &self.queues {
            t.messages += q.count;
            t.pending += q.pending;
            t.leased += q.leased;
            t.attachments += q.attachments;
            t.in_rate += q.in_rate;
            t.out_rate += q.out_rate;
        }
        t.subscribers = self.channels.iter().map(|c| c.subscribers).sum();
        t
    }

    /// What `view` shows of this snapshot: the page of queues the filter
    /// admits, deepest first, and the channels it admits.
    pub fn view<'a>(&'a self, view: &'a View) -> Shown<'a> {
        let top = match view.top {
            0 => DEFAULT_TOP,
            n => n.min(MAX_TOP),
        };
        let admits = |name: &str| name.contains(view.filter.as_str());
        let matched: Vec<&QueueRow> = self.queues.iter().filter(|q| admits(&q.name)).collect();
        let pages = matched.len().div_ceil(top).max(1);
        let page = view.page.min(pages - 1);
        let queues = matched.iter().skip(page * top).take(top).copied().collect();
        Shown {
            at_ms: self.at_ms,
            error: self.error.as_deref(),
            truncated: self.truncated,
            totals: self.totals(),
            filter: &view.filter,
            matched: matched.len(),
            page,
            pages,
            top,
            queues,
            channels: self.channels.iter().filter(|c| admits(&c.name)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busmq_client::QueueInfo;
    use std::time::Duration;

    fn listed(name: &str, count: u64, pushed: u64, consumed: u64) -> ListedQueue {
        ListedQueue {
            name: name.into(),
            info: QueueInfo {
                count,
                pushed,
                consumed,
                ..QueueInfo::default()
            },
        }
    }

    #[test]
    fn rates_come_from_successive_readings_and_forget_gone_queues() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        let first = rates.rows(vec![listed("a", 0, 10, 0), listed("b", 0, 5, 5)], t0);
        assert!(
            first.iter().all(|q| q.in_rate == 0.0),
            "no previous reading"
        );
        let t1 = t0 + Duration::from_secs(2);
        let second = rates.rows(vec![listed("a", 0, 30, 4), listed("c", 0, 7, 0)], t1);
        assert_eq!((second[0].in_rate, second[0].out_rate), (10.0, 2.0));
        assert_eq!(second[1].in_rate, 0.0, "c is new");
        assert_eq!(rates.previous.len(), 2, "b is forgotten");
        // Re-created with lower counters: no negative rate.
        let third = rates.rows(vec![listed("a", 0, 1, 0)], t1 + Duration::from_secs(1));
        assert_eq!(third[0].in_rate, 0.0);
    }

    #[test]
    fn a_view_pages_the_filtered_queues_by_depth() {
        let mut rates = Rates::default();
        let mut queues = rates.rows(
            (0..250)
                .map(|i| listed(&format!("q{i:03}"), i, 0, 0))
                .collect(),
            Instant::now(),
        );
        queues.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
        let snapshot = Snapshot {
            queues,
            ..Snapshot::default()
        };
        let all = View::default();
        let shown = snapshot.view(&all);
        assert_eq!(
            (shown.matched, shown.pages, shown.queues.len()),
            (250, 3, 100)
        );
        assert_eq!(shown.queues[0].name, "q249", "deepest first");
        assert_eq!(shown.totals.messages, (0..250).sum::<u64>());
        let filtered = View {
            filter: "q1".into(),
            top: 20,
            page: 99,
        };
        let shown = snapshot.view(&filtered);
        assert_eq!((shown.matched, shown.pages, shown.page), (100, 5, 4));
        assert_eq!(shown.queues.len(), 20);
        assert!(shown.queues.iter().all(|q| q.name.starts_with("q1")));
    }
}
