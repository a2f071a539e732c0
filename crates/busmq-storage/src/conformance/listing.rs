//! Conformance checks of listing queues and channels. Each check lists only
//! the names it made (by filtering on a tag unique to the call), so other
//! checks and processes may use the store meanwhile.

use std::sync::Arc;
use std::time::Duration;

use busmq_core::Limits;
use bytes::Bytes;

use super::{TTL, WAIT, payloads, unique_channel, unique_queue};
use crate::{ChannelFilter, ChannelName, QueueFilter, QueueName, Storage, Subscription};

/// Every queue (with its info) a walk of pages of `limit` returns, asserting
/// that no page is larger than `limit`.
async fn walk_queues(
    s: &Arc<dyn Storage>,
    contains: &str,
    limit: u32,
) -> Vec<(QueueName, crate::QueueInfo)> {
    let mut filter = QueueFilter {
        contains: Some(contains.to_owned()),
        after: None,
        limit,
    };
    let mut all = Vec::new();
    for _ in 0..1000 {
        let page = s.list_queues(&filter).await.expect("list_queues");
        assert!(page.items.len() <= limit as usize, "a page over its limit");
        all.extend(page.items);
        match page.next_after {
            Some(next) => filter.after = Some(next),
            None => return all,
        }
    }
    panic!("a walk of pages that does not end");
}

/// Walking the pages of a filtered listing returns each queue of the
/// filter exactly once, in name order, each with the state `info` gives;
/// a cursor starts after its name; a closed queue is no longer listed.
pub async fn list_queues_pages_once_in_name_order(s: Arc<dyn Storage>) {
    let tag = unique_queue("list").to_string();
    let mut names: Vec<QueueName> = (0..23)
        .map(|i| QueueName::parse(&format!("{tag}.q{:02}", (i * 7) % 23), &Limits::default()))
        .collect::<Result<_, _>>()
        .expect("valid names");
    // Created out of name order, each with its own count.
    for (i, q) in names.iter().enumerate() {
        s.attach(q, Some(TTL)).await.unwrap();
        s.push(q, payloads(1..=(i as u64 % 4 + 1))).await.unwrap();
    }
    let outsider = unique_queue("list.outsider");
    s.attach(&outsider, Some(TTL)).await.unwrap();
    names.sort();

    let listed = walk_queues(&s, &tag, 5).await;
    let listed_names: Vec<&QueueName> = listed.iter().map(|(n, _)| n).collect();
    assert_eq!(listed_names, names.iter().collect::<Vec<_>>());
    for (name, info) in &listed {
        assert_eq!(Some(*info), s.info(name).await.unwrap(), "info of {name}");
    }
    let one_page = walk_queues(&s, &tag, 1000).await;
    assert_eq!(one_page, listed, "one page holds what five-name pages did");

    let from_middle = s
        .list_queues(&QueueFilter {
            contains: Some(tag.clone()),
            after: Some(names[10].clone()),
            limit: 3,
        })
        .await
        .unwrap();
    let page: Vec<&QueueName> = from_middle.items.iter().map(|(n, _)| n).collect();
    assert_eq!(page, names[11..14].iter().collect::<Vec<_>>());
    assert_eq!(from_middle.next_after.as_ref(), Some(&names[13]));

    assert!(s.close(&names[0]).await.unwrap());
    let after_close = walk_queues(&s, &tag, 10).await;
    assert_eq!(after_close.len(), names.len() - 1);
    assert!(after_close.iter().all(|(n, _)| n != &names[0]));
    let none = walk_queues(&s, &format!("{tag}.nothing"), 10).await;
    assert!(none.is_empty(), "no queue contains the text: {none:?}");
}

/// Dead-letter queues are queues: listed beside their queue, with their
/// messages counted.
pub async fn list_queues_includes_dead_letter_queues(s: Arc<dyn Storage>) {
    let q = unique_queue("list.dlq");
    s.attach(&q, Some(TTL)).await.unwrap();
    s.set_max_deliveries(&q, 1).await.unwrap();
    s.push(&q, payloads(1..=1)).await.unwrap();
    let leased = s.lease(&q, "a", 1, TTL).await.unwrap();
    let token = leased.messages[0].token();
    s.settle(&q, token, crate::Settlement::Nack).await.unwrap();
    let listed = walk_queues(&s, q.as_str(), 10).await;
    let names: Vec<&QueueName> = listed.iter().map(|(n, _)| n).collect();
    assert_eq!(names, [&q, &q.dead_letters()]);
    assert_eq!(listed[1].1.count, 1, "the dead letter");
}

/// The channels of a filtered listing with subscribers `counts` (within
/// [`WAIT`]: unsubscribing is asynchronous in some stores).
async fn expect_channels(s: &Arc<dyn Storage>, tag: &str, counts: &[(&ChannelName, u64)]) {
    let filter = ChannelFilter {
        contains: Some(tag.to_owned()),
        after: None,
        limit: 100,
    };
    let want: Vec<(ChannelName, u64)> = counts.iter().map(|(c, n)| ((*c).clone(), *n)).collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let page = s.list_channels(&filter).await.expect("list_channels");
        if page.items == want {
            assert_eq!(page.next_after, None);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "channels {:?}, not {want:?}, after {WAIT:?}",
            page.items
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Channels are listed in name order with their subscriber counts while
/// someone subscribes, paged by cursor, and go when the last subscriber
/// leaves.
pub async fn list_channels_with_subscriber_counts(s: Arc<dyn Storage>) {
    let tag = unique_channel("list").to_string();
    let channel = |suffix: &str| {
        ChannelName::parse(&format!("{tag}.{suffix}"), &Limits::default()).expect("valid")
    };
    let (a, b) = (channel("a"), channel("b"));
    let subs: Vec<Subscription> = vec![
        s.subscribe(&b).await.unwrap(),
        s.subscribe(&a).await.unwrap(),
        s.subscribe(&a).await.unwrap(),
    ];
    assert_eq!(s.publish(&a, Bytes::from_static(b"x")).await.unwrap(), 2);
    expect_channels(&s, &tag, &[(&a, 2), (&b, 1)]).await;

    let first = s
        .list_channels(&ChannelFilter {
            contains: Some(tag.clone()),
            after: None,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(first.items, vec![(a.clone(), 2)]);
    assert_eq!(first.next_after.as_ref(), Some(&a));
    let second = s
        .list_channels(&ChannelFilter {
            contains: Some(tag.clone()),
            after: first.next_after,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(second.items, vec![(b.clone(), 1)]);

    let mut subs = subs.into_iter();
    drop(subs.next());
    expect_channels(&s, &tag, &[(&a, 2)]).await;
    drop(subs);
    expect_channels(&s, &tag, &[]).await;
}
