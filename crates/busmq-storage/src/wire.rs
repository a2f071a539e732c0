//! Batches of messages in their wire form on the broker↔storage hop.
//!
//! Every message crosses the hop twice (pushed, then taken), so the batch
//! is one `bytes` field holding the payloads back to back plus packed
//! lengths and ids, instead of a field per message: encoding is one copy
//! per payload, and decoding slices one buffer without a tag, a length
//! prefix or an allocation per message.

use busmq_proto::storage::v1 as pb;
use bytes::{BufMut, Bytes, BytesMut};

use crate::{Error, Message, TakeMode};

/// Packs `payloads` into one field.
pub fn pack(payloads: &[Bytes]) -> pb::Payloads {
    pack_each(payloads.iter())
}

fn pack_each<'a, I>(payloads: I) -> pb::Payloads
where
    I: ExactSizeIterator<Item = &'a Bytes> + Clone,
{
    let size = payloads.clone().map(Bytes::len).sum();
    let mut data = BytesMut::with_capacity(size);
    let mut lengths = Vec::with_capacity(payloads.len());
    for payload in payloads {
        data.put_slice(payload);
        lengths.push(len_u32(payload));
    }
    pb::Payloads {
        data: data.freeze(),
        lengths,
    }
}

/// The payloads of a packed batch, each a view of the one buffer; fails
/// when the lengths do not add up to the data (a peer's bug or a forged
/// request, never a reason to panic).
pub fn unpack(payloads: pb::Payloads) -> Result<Vec<Bytes>, Error> {
    let pb::Payloads { data, lengths } = payloads;
    let mut out = Vec::with_capacity(lengths.len());
    let mut at = 0usize;
    for &len in &lengths {
        let end = at
            .checked_add(len as usize)
            .filter(|&end| end <= data.len())
            .ok_or_else(|| malformed(&lengths, data.len()))?;
        out.push(data.slice(at..end));
        at = end;
    }
    if at != data.len() {
        return Err(malformed(&lengths, data.len()));
    }
    Ok(out)
}

/// Stored messages in their wire form.
pub fn messages_to_wire(messages: &[Message]) -> pb::Messages {
    pb::Messages {
        ids: messages.iter().map(|m| m.id).collect(),
        payloads: Some(pack_each(messages.iter().map(|m| &m.payload))),
    }
}

/// Stored messages from their wire form; fails when ids and payloads do
/// not pair up.
pub fn messages_from_wire(messages: pb::Messages) -> Result<Vec<Message>, Error> {
    let payloads = unpack(messages.payloads.unwrap_or_default())?;
    if payloads.len() != messages.ids.len() {
        return Err(Error::InvalidArgument(format!(
            "a batch of {} ids and {} payloads",
            messages.ids.len(),
            payloads.len()
        )));
    }
    Ok(messages
        .ids
        .into_iter()
        .zip(payloads)
        .map(|(id, payload)| Message { id, payload })
        .collect())
}

/// A payload's length on the wire. Limits keep a message far below 4 GiB
/// (`Limits::max_message_bytes`); one that is not saturates, and the
/// receiver refuses the batch as malformed rather than mis-slicing it.
fn len_u32(payload: &[u8]) -> u32 {
    u32::try_from(payload.len()).unwrap_or(u32::MAX)
}

fn malformed(lengths: &[u32], size: usize) -> Error {
    let total: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
    Error::InvalidArgument(format!(
        "a batch of {} payloads whose lengths add up to {total} bytes, with {size} bytes of data",
        lengths.len()
    ))
}

impl From<TakeMode> for pb::TakeMode {
    fn from(mode: TakeMode) -> Self {
        match mode {
            TakeMode::Remove => pb::TakeMode::Remove,
            TakeMode::Pending => pb::TakeMode::Pending,
        }
    }
}

/// The take mode of a request as it came over the wire; unset is
/// [`TakeMode::Remove`], an unknown value is refused.
pub fn take_mode(mode: i32) -> Result<TakeMode, Error> {
    match pb::TakeMode::try_from(mode) {
        Ok(pb::TakeMode::Unspecified | pb::TakeMode::Remove) => Ok(TakeMode::Remove),
        Ok(pb::TakeMode::Pending) => Ok(TakeMode::Pending),
        Err(_) => Err(Error::InvalidArgument(format!("unknown take mode {mode}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(sizes: &[usize]) -> Vec<Bytes> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from(vec![i as u8; n]))
            .collect()
    }

    #[test]
    fn payloads_come_back_as_they_went_including_empty_ones() {
        for sizes in [&[][..], &[0], &[32, 0, 1, 1000], &[0, 0, 0]] {
            let payloads = batch(sizes);
            assert_eq!(unpack(pack(&payloads)).unwrap(), payloads, "{sizes:?}");
        }
    }

    #[test]
    fn messages_keep_their_ids_and_order() {
        let messages: Vec<Message> = batch(&[3, 0, 7])
            .into_iter()
            .zip([5, 9, 10])
            .map(|(payload, id)| Message { id, payload })
            .collect();
        let back = messages_from_wire(messages_to_wire(&messages)).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in back.iter().zip(&messages) {
            assert_eq!((a.id, &a.payload), (b.id, &b.payload));
        }
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        let forged = [
            (&b"abcd"[..], vec![2u32, 3]),
            (b"abcd", vec![1, 1]),
            (b"", vec![1]),
            (b"abcd", vec![u32::MAX, u32::MAX]),
            (b"x", vec![]),
        ];
        for (data, lengths) in forged {
            let payloads = pb::Payloads {
                data: Bytes::copy_from_slice(data),
                lengths: lengths.clone(),
            };
            let e = unpack(payloads).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{lengths:?}: {e}");
        }
    }

    #[test]
    fn ids_that_do_not_pair_with_payloads_are_refused() {
        let mut wire = messages_to_wire(&[Message {
            id: 1,
            payload: Bytes::from_static(b"a"),
        }]);
        wire.ids.push(2);
        assert!(matches!(
            messages_from_wire(wire),
            Err(Error::InvalidArgument(_))
        ));
    }
}
