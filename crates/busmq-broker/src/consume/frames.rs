//! Cutting what a take brought into stream frames of bounded size.
//!
//! A take is bounded by message count (`prefetch`), so with large messages
//! it can hold far more bytes than one gRPC message may carry: encoding it
//! as one frame would fail the stream after the messages left the store.
//! Frames are cut instead, in order, each at most [`FRAME_BYTES`] of
//! payload (one message always fits), which also keeps them under the
//! 4 MiB a gRPC client in any language accepts by default.

use busmq_proto::v1::{self, QueueConsumeEvent, consume_event::Event};

/// Payload bytes one consume frame carries at most, beyond its first
/// message.
pub const FRAME_BYTES: usize = 2 << 20;

/// What a message costs in a frame besides its payload (id, attempt,
/// field tags and lengths), generously.
const MESSAGE_OVERHEAD: usize = 32;

fn cost(message: &v1::Message) -> usize {
    message.payload.len() + MESSAGE_OVERHEAD
}

/// Cuts `items` into frames, in order: a frame closes when the next item
/// would take it past [`FRAME_BYTES`]; an item alone always fits.
fn cut<T>(items: impl IntoIterator<Item = T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !frame.is_empty() && bytes + n > FRAME_BYTES {
            frames.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += n;
        frame.push(item);
    }
    if !frame.is_empty() {
        frames.push(frame);
    }
    frames
}

/// Cuts `batch` into runs of at most [`FRAME_BYTES`] each (at least one
/// message each), in order. A batch that fits comes back whole.
pub fn split(batch: Vec<v1::Message>) -> Vec<Vec<v1::Message>> {
    if batch.iter().map(cost).sum::<usize>() <= FRAME_BYTES {
        return vec![batch];
    }
    cut(batch, cost)
}

/// A ConsumeMany event taken apart to be cut: one message of a queue, or
/// an event that carries none.
enum Part {
    Message(u32, v1::Message),
    Other(QueueConsumeEvent),
}

/// Cuts a ConsumeMany round's events into frames of at most
/// [`FRAME_BYTES`] of payload each, in order; a queue's messages that do
/// not fit in one frame continue in the next. A round that fits comes
/// back whole.
pub fn split_many(events: Vec<QueueConsumeEvent>) -> Vec<Vec<QueueConsumeEvent>> {
    let total: usize = events
        .iter()
        .filter_map(|e| match e.event.as_ref().and_then(|e| e.event.as_ref()) {
            Some(Event::Messages(batch)) => Some(batch.messages.iter().map(cost).sum::<usize>()),
            _ => None,
        })
        .sum();
    if total <= FRAME_BYTES {
        return vec![events];
    }
    let parts = events.into_iter().flat_map(|event| {
        let queue = event.queue;
        match event.event.and_then(|e| e.event) {
            Some(Event::Messages(batch)) => batch
                .messages
                .into_iter()
                .map(|m| Part::Message(queue, m))
                .collect(),
            other => vec![Part::Other(super::queue_event(
                queue,
                v1::ConsumeEvent { event: other },
            ))],
        }
    });
    let size = |part: &Part| match part {
        Part::Message(_, m) => cost(m),
        Part::Other(_) => 0,
    };
    cut(parts, size).into_iter().map(regroup).collect()
}

/// Puts a frame's consecutive messages of one queue back into one event.
fn regroup(frame: Vec<Part>) -> Vec<QueueConsumeEvent> {
    let mut events = Vec::new();
    let mut run: Option<(u32, Vec<v1::Message>)> = None;
    for part in frame {
        match part {
            Part::Message(queue, m) => match &mut run {
                Some((q, messages)) if *q == queue => messages.push(m),
                _ => {
                    if let Some((q, messages)) = run.replace((queue, vec![m])) {
                        events.push(super::queue_messages(q, messages));
                    }
                }
            },
            Part::Other(event) => {
                if let Some((q, messages)) = run.take() {
                    events.push(super::queue_messages(q, messages));
                }
                events.push(event);
            }
        }
    }
    if let Some((q, messages)) = run {
        events.push(super::queue_messages(q, messages));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, size: usize) -> v1::Message {
        v1::Message {
            id,
            payload: vec![0u8; size].into(),
            attempt: 0,
        }
    }

    fn ids(frame: &[v1::Message]) -> Vec<u64> {
        frame.iter().map(|m| m.id).collect()
    }

    #[test]
    fn a_batch_that_fits_stays_whole_and_a_large_one_is_cut_in_order() {
        let small: Vec<_> = (1..=1000).map(|id| message(id, 100)).collect();
        assert_eq!(split(small).len(), 1);

        let large: Vec<_> = (1..=10).map(|id| message(id, 700 << 10)).collect();
        let frames = split(large);
        assert_eq!(
            frames.iter().map(|f| ids(f)).collect::<Vec<_>>(),
            [vec![1, 2], vec![3, 4], vec![5, 6], vec![7, 8], vec![9, 10]]
        );
        // One message larger than a frame still goes, alone.
        let huge = split(vec![message(1, 3 << 20), message(2, 10)]);
        assert_eq!(
            huge.iter().map(|f| ids(f)).collect::<Vec<_>>(),
            [vec![1], vec![2]]
        );
    }

    #[test]
    fn many_queue_frames_stay_bounded_and_keep_each_queue_in_order() {
        let batch = |ids: std::ops::RangeInclusive<u64>, size| {
            ids.map(|id| message(id, size)).collect::<Vec<_>>()
        };
        let events = vec![
            super::super::queue_messages(0, batch(1..=3, 100)),
            super::super::queue_messages(1, batch(1..=7, 600 << 10)),
            super::super::queue_messages(2, batch(1..=2, 100)),
        ];
        let frames = split_many(events);
        let mut seen: Vec<(u32, u64)> = Vec::new();
        for frame in &frames {
            let mut bytes = 0;
            for event in frame {
                let Some(Event::Messages(b)) = event.event.as_ref().and_then(|e| e.event.as_ref())
                else {
                    panic!("only messages here");
                };
                bytes += b.messages.iter().map(cost).sum::<usize>();
                seen.extend(b.messages.iter().map(|m| (event.queue, m.id)));
            }
            assert!(bytes <= FRAME_BYTES, "a frame of {bytes} bytes");
        }
        assert!(frames.len() >= 3, "{} frames", frames.len());
        let want: Vec<(u32, u64)> = [(0, 1..=3), (1, 1..=7), (2, 1..=2)]
            .into_iter()
            .flat_map(|(q, ids)| ids.map(move |id| (q, id)))
            .collect();
        assert_eq!(seen, want);
    }
}
