//! The attempt of each lease this gateway handed out, so that a done that
//! names only a message id can settle the delivery by its full lease token.
//!
//! The bus acks a lease by `(id, attempt)`: only the current delivery's
//! token removes the message. The message-queue API's done names the id
//! alone, so the gateway remembers, per queue and id, the attempt it handed
//! out and the moment that lease runs out (as seen from here: measured from
//! before the consume was asked, so never later than the store's own
//! deadline). An entry is dropped when it is done, refused, or past that
//! moment; a done after it is 404 without asking the bus.
//!
//! Leases may have different visibility timeouts (`/v1`'s `?visibility`),
//! so deadlines are kept in a min-heap and expired entries are dropped from
//! its top in O(log n) each.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// One lease handed out: its attempt and when it runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    attempt: u32,
    deadline: Instant,
}

type Key = (Arc<str>, u64);

#[derive(Debug, Default)]
struct Book {
    entries: HashMap<Key, Entry>,
    /// Every entry made, earliest deadline on top, to drop each at its
    /// deadline. An entry replaced since (the message leased again through
    /// this gateway) stays here until its own deadline and then removes
    /// nothing.
    order: BinaryHeap<Reverse<(Instant, Key, u32)>>,
}

impl Book {
    fn purge(&mut self, now: Instant) {
        while let Some(Reverse((deadline, _, _))) = self.order.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((_, key, attempt))) = self.order.pop() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|e| e.attempt == attempt) {
                self.entries.remove(&key);
            }
        }
    }
}

/// The leases this gateway handed out and not yet saw settled or expire,
/// at most `capacity` of them.
#[derive(Debug)]
pub struct LeaseBook {
    book: Mutex<Book>,
    capacity: usize,
}

impl LeaseBook {
    /// An empty book holding at most `capacity` leases.
    pub fn new(capacity: usize) -> LeaseBook {
        LeaseBook {
            book: Mutex::new(Book::default()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // The book holds no invariant a panicking holder could break half
        // way that matters more than serving on.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when another lease fits. Checked before a message is taken, so
    /// a full book refuses the request instead of leasing a message it
    /// cannot track; several requests at once may pass it together, so
    /// the bound is approximate by the number of requests in flight.
    pub fn has_room(&self, now: Instant) -> bool {
        let mut book = self.lock();
        book.purge(now);
        book.entries.len() < self.capacity
    }

    /// How many leases the book tracks.
    pub fn len(&self, now: Instant) -> usize {
        let mut book = self.lock();
        book.purge(now);
        book.entries.len()
    }

    /// True when the book tracks no lease.
    pub fn is_empty(&self, now: Instant) -> bool {
        self.len(now) == 0
    }

    /// The most leases the book tracks.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Records that message `id` of `queue` was leased with `attempt` until
    /// `deadline`, replacing an earlier lease of it.
    pub fn insert(&self, queue: &str, id: u64, attempt: u32, deadline: Instant, now: Instant) {
        let mut book = self.lock();
        book.purge(now);
        let key: Key = (Arc::from(queue), id);
        book.entries
            .insert(key.clone(), Entry { attempt, deadline });
        book.order.push(Reverse((deadline, key, attempt)));
    }

    /// The attempt of the lease of message `id` of `queue`, if this gateway
    /// handed one out that has not run out.
    pub fn attempt(&self, queue: &str, id: u64, now: Instant) -> Option<u32> {
        let mut book = self.lock();
        book.purge(now);
        book.entries
            .get(&(Arc::from(queue), id))
            .filter(|e| e.deadline > now)
            .map(|e| e.attempt)
    }

    /// Forgets the lease `(id, attempt)` of `queue`, if it is the one
    /// recorded (a later lease of the same message stays).
    pub fn remove(&self, queue: &str, id: u64, attempt: u32) {
        let mut book = self.lock();
        let key: Key = (Arc::from(queue), id);
        if book.entries.get(&key).is_some_and(|e| e.attempt == attempt) {
            book.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_lease_is_known_until_its_deadline() {
        let book = LeaseBook::new(10);
        let t0 = Instant::now();
        let lease = Duration::from_secs(30);
        book.insert("q", 1, 1, t0 + lease, t0);
        assert_eq!(book.attempt("q", 1, t0), Some(1));
        assert_eq!(book.attempt("other", 1, t0), None);
        assert_eq!(book.attempt("q", 2, t0), None);
        assert_eq!(book.attempt("q", 1, t0 + lease), None);
        assert!(book.is_empty(t0 + lease));
    }

    #[test]
    fn a_later_lease_replaces_and_outlives_an_earlier_one() {
        let book = LeaseBook::new(10);
        let t0 = Instant::now();
        let lease = Duration::from_secs(30);
        book.insert("q", 1, 1, t0 + lease, t0);
        let t1 = t0 + Duration::from_secs(31);
        book.insert("q", 1, 2, t1 + lease, t1);
        // The first lease's deadline passes: the second stays.
        assert_eq!(book.attempt("q", 1, t1), Some(2));
        // Removing the stale attempt changes nothing.
        book.remove("q", 1, 1);
        assert_eq!(book.attempt("q", 1, t1), Some(2));
        book.remove("q", 1, 2);
        assert_eq!(book.attempt("q", 1, t1), None);
    }

    #[test]
    fn leases_of_different_timeouts_expire_each_at_its_own_deadline() {
        let book = LeaseBook::new(10);
        let t0 = Instant::now();
        book.insert("q", 1, 1, t0 + Duration::from_secs(60), t0);
        book.insert("q", 2, 1, t0 + Duration::from_secs(1), t0);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            book.len(t1),
            1,
            "the short lease is dropped behind the long one"
        );
        assert_eq!(book.attempt("q", 1, t1), Some(1));
        assert_eq!(book.attempt("q", 2, t1), None);
    }

    #[test]
    fn the_book_is_bounded_and_frees_room_as_leases_expire() {
        let book = LeaseBook::new(2);
        let t0 = Instant::now();
        let lease = Duration::from_secs(1);
        book.insert("q", 1, 1, t0 + lease, t0);
        assert!(book.has_room(t0));
        book.insert("q", 2, 1, t0 + lease, t0);
        assert!(!book.has_room(t0));
        assert!(book.has_room(t0 + lease));
        assert_eq!(book.len(t0 + lease), 0);
    }
}
