//! Listing what exists on the bus: queues and pub/sub channels, a page at a
//! time in name order. One definition of the request ([`ListFilter`]), its
//! checks and its paging ([`ListFilter::page`]) for every layer: each store
//! gathers the names it holds, the edges check what clients send, the SDK
//! and the CLI walk the pages.

use crate::name::is_name_byte;
use crate::{ChannelName, Error, Limits, QueueInfo, QueueName, Result};

/// Most names one page may hold.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Names in a page when the request names no limit (0).
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// A name a listing is ordered and paged by.
pub trait ListName: Clone + Ord + AsRef<str> + Send + Sync + 'static {
    /// Parses `name` as this kind of name under `limits`.
    fn parse_name(name: &str, limits: &Limits) -> Result<Self>;
}

impl ListName for QueueName {
    fn parse_name(name: &str, limits: &Limits) -> Result<Self> {
        QueueName::parse(name, limits)
    }
}

impl ListName for ChannelName {
    fn parse_name(name: &str, limits: &Limits) -> Result<Self> {
        ChannelName::parse(name, limits)
    }
}

/// Which names one page of a listing holds: those containing `contains`,
/// after `after` in name (byte) order, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter<N> {
    /// Only names containing this text; `None` lists every name.
    pub contains: Option<String>,
    /// Only names after this one: the [`Page::next_after`] of the previous
    /// page. `None` starts at the first name.
    pub after: Option<N>,
    /// Most names in the page, 1 to [`MAX_LIST_LIMIT`] (a store caps a
    /// larger one and treats 0 as 1).
    pub limit: u32,
}

/// A page request of queues.
pub type QueueFilter = ListFilter<QueueName>;

/// A page request of pub/sub channels.
pub type ChannelFilter = ListFilter<ChannelName>;

impl<N> Default for ListFilter<N> {
    fn default() -> Self {
        ListFilter {
            contains: None,
            after: None,
            limit: DEFAULT_LIST_LIMIT,
        }
    }
}

impl<N: ListName> ListFilter<N> {
    /// A request as it arrives from a client, checked: `contains` and
    /// `after` empty mean none, `limit` 0 means [`DEFAULT_LIST_LIMIT`].
    /// A limit over [`MAX_LIST_LIMIT`], a filter no name can contain, or a
    /// cursor that is no valid name is [`Error::InvalidArgument`].
    pub fn from_request(contains: &str, after: &str, limit: u32, limits: &Limits) -> Result<Self> {
        if limit > MAX_LIST_LIMIT {
            return Err(Error::InvalidArgument(format!(
                "a page holds at most {MAX_LIST_LIMIT} names, not {limit}"
            )));
        }
        if contains.len() > limits.max_name_len || !contains.bytes().all(is_name_byte) {
            return Err(Error::InvalidArgument(format!(
                "no name can contain the filter {:?}: names have at most {} bytes of \
                 A-Z a-z 0-9 . _ : -",
                contains.chars().take(64).collect::<String>(),
                limits.max_name_len
            )));
        }
        let after = match after {
            "" => None,
            name => Some(N::parse_name(name, limits).map_err(|e| {
                Error::InvalidArgument(format!("the cursor `after` is no valid name: {e}"))
            })?),
        };
        Ok(ListFilter {
            contains: (!contains.is_empty()).then(|| contains.to_owned()),
            after,
            limit: if limit == 0 {
                DEFAULT_LIST_LIMIT
            } else {
                limit
            },
        })
    }

    /// The page size a store uses: `limit` within 1..=[`MAX_LIST_LIMIT`].
    pub fn capped_limit(&self) -> usize {
        self.limit.clamp(1, MAX_LIST_LIMIT) as usize
    }

    /// Whether `name` belongs to some page of this listing from the cursor
    /// on: it contains the filter and sorts after the cursor.
    pub fn admits(&self, name: &str) -> bool {
        self.contains.as_deref().is_none_or(|c| name.contains(c))
            && self.after.as_ref().is_none_or(|a| name > a.as_ref())
    }

    /// The page of `items` this filter asks for: the admitted names in
    /// order, at most [`capped_limit`](Self::capped_limit), with the cursor
    /// of the next page when more were admitted. A name given twice counts
    /// once (its first item).
    pub fn page<T>(&self, items: impl IntoIterator<Item = (N, T)>) -> Page<N, T> {
        let mut admitted: Vec<(N, T)> = items
            .into_iter()
            .filter(|(name, _)| self.admits(name.as_ref()))
            .collect();
        admitted.sort_by(|a, b| a.0.cmp(&b.0));
        admitted.dedup_by(|later, first| later.0 == first.0);
        let limit = self.capped_limit();
        let more = admitted.len() > limit;
        admitted.truncate(limit);
        Page {
            next_after: more
                .then(|| admitted.last().map(|(n, _)| n.clone()))
                .flatten(),
            items: admitted,
        }
    }
}

/// One page of a listing, in name order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<N, T> {
    /// The names of the page, each with what is listed about it.
    pub items: Vec<(N, T)>,
    /// Where the next page starts (its [`ListFilter::after`]); `None` when
    /// this page is the last.
    pub next_after: Option<N>,
}

impl<N, T> Default for Page<N, T> {
    fn default() -> Self {
        Page {
            items: Vec::new(),
            next_after: None,
        }
    }
}

impl<N, T> Page<N, T> {
    /// The same page with what is listed about each name replaced by
    /// `f(name, item)`, dropping the names for which it is `None` (a queue
    /// that went away between the two steps of a listing).
    pub fn filter_map<U>(self, mut f: impl FnMut(&N, T) -> Option<U>) -> Page<N, U> {
        let page: std::result::Result<_, std::convert::Infallible> =
            self.try_filter_map(|n, t| Ok(f(n, t)));
        match page {
            Ok(page) => page,
        }
    }

    /// [`filter_map`](Self::filter_map) with a step that may fail: the
    /// first error is the result.
    pub fn try_filter_map<U, E>(
        self,
        mut f: impl FnMut(&N, T) -> std::result::Result<Option<U>, E>,
    ) -> std::result::Result<Page<N, U>, E> {
        let mut items = Vec::with_capacity(self.items.len());
        for (n, t) in self.items {
            if let Some(u) = f(&n, t)? {
                items.push((n, u));
            }
        }
        Ok(Page {
            items,
            next_after: self.next_after,
        })
    }
}

/// A page of queues, each with its state as [`QueueInfo`].
pub type QueuePage = Page<QueueName, QueueInfo>;

/// A page of pub/sub channels, each with its subscriber count.
pub type ChannelPage = Page<ChannelName, u64>;

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> QueueName {
        QueueName::parse(name, &Limits::default()).unwrap()
    }

    fn filter(contains: &str, after: &str, limit: u32) -> QueueFilter {
        QueueFilter::from_request(contains, after, limit, &Limits::default()).unwrap()
    }

    #[test]
    fn pages_in_name_order_from_the_cursor() {
        let names = ["c", "a", "b.x", "d.x", "b.x"];
        let items = || names.iter().map(|n| (q(n), ()));
        let first = filter("", "", 2).page(items());
        assert_eq!(first.items, vec![(q("a"), ()), (q("b.x"), ())]);
        assert_eq!(first.next_after, Some(q("b.x")));
        let second = filter("", "b.x", 2).page(items());
        assert_eq!(second.items, vec![(q("c"), ()), (q("d.x"), ())]);
        assert_eq!(second.next_after, None, "nothing after d.x");
        let filtered = filter(".x", "", 0).page(items());
        assert_eq!(filtered.items, vec![(q("b.x"), ()), (q("d.x"), ())]);
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let limits = Limits::default();
        for (contains, after, limit) in [
            ("", "", MAX_LIST_LIMIT + 1),
            ("a b", "", 10),
            ("", "no spaces", 10),
            (&*"x".repeat(201), "", 10),
        ] {
            let err = QueueFilter::from_request(contains, after, limit, &limits).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        }
        assert_eq!(filter("", "", 0).limit, DEFAULT_LIST_LIMIT);
    }
}
