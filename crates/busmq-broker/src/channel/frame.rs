//! The envelope of every message stored in a channel queue.

use busmq_core::Limits;
use busmq_proto::to_status;
use busmq_proto::v1::{ChannelFrame, channel_frame};
use bytes::Bytes;
use prost::Message as _;
use tonic::Status;

pub use channel_frame::Frame;

/// Wraps application messages as data frames, after checking them against
/// the limits a plain push has.
pub fn data_frames(messages: Vec<Bytes>, limits: &Limits) -> Result<Vec<Bytes>, Status> {
    limits.check_batch(&messages).map_err(to_status)?;
    Ok(messages
        .into_iter()
        .map(|m| encode(Frame::Data(m)))
        .collect())
}

/// One frame as stored.
pub fn encode(frame: Frame) -> Bytes {
    ChannelFrame { frame: Some(frame) }.encode_to_vec().into()
}

/// The frame a stored message holds; `None` for anything else (a message
/// pushed into a channel queue through the queue API).
pub fn decode(stored: Bytes) -> Option<Frame> {
    ChannelFrame::decode(stored).ok()?.frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Data(Bytes::from_static(b"hello")),
            Frame::Data(Bytes::new()),
            Frame::Connect(channel_frame::Connect { answer: false }),
            Frame::Connect(channel_frame::Connect { answer: true }),
            Frame::Disconnect(channel_frame::Disconnect {}),
            Frame::End(channel_frame::End {}),
        ];
        for frame in frames {
            assert_eq!(decode(encode(frame.clone())), Some(frame));
        }
    }

    #[test]
    fn foreign_messages_are_not_frames() {
        assert_eq!(decode(Bytes::new()), None);
        assert_eq!(decode(Bytes::from_static(&[0xff, 0xff, 0xff])), None);
    }

    #[test]
    fn data_frames_keep_the_limits() {
        let limits = Limits::default();
        assert!(data_frames(Vec::new(), &limits).is_err());
        let big = Bytes::from(vec![0u8; limits.max_message_bytes + 1]);
        let err = data_frames(vec![big], &limits).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}
