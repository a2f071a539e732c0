//! How the client commands print what they got.

use std::fmt::Write as _;

use busmq_client::{ListedChannel, ListedQueue, QueueInfo};

/// The payload as one line of text: invalid UTF-8 replaced, and (unless
/// `raw`) backslash, newline, carriage return and tab escaped so the line
/// format `ID<TAB>PAYLOAD` stays unambiguous.
pub fn payload_text(payload: &[u8], raw: bool) -> String {
    let text = String::from_utf8_lossy(payload);
    if raw {
        return text.into_owned();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// `busmq stats` as aligned `name  value` lines.
pub fn stats_text(queue: &str, info: &QueueInfo) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let max_deliveries = match info.max_deliveries {
        0 => "unlimited".to_owned(),
        n => n.to_string(),
    };
    let rows: [(&str, String); 11] = [
        ("queue", queue.to_owned()),
        ("messages", info.count.to_string()),
        ("pending acks", info.pending.to_string()),
        ("leased", info.leased.to_string()),
        ("max deliveries", max_deliveries),
        (
            "reliable consumer",
            yes_no(info.reliable_consumer).to_owned(),
        ),
        ("attachments", info.attachments.to_string()),
        ("ttl", format!("{}s", info.ttl.as_secs())),
        ("next id", info.next_id.to_string()),
        ("pushed", info.pushed.to_string()),
        ("consumed", info.consumed.to_string()),
    ];
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in rows {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// `busmq stats --json`: the proto's field names, one object.
pub fn stats_json(queue: &str, info: &QueueInfo) -> serde_json::Value {
    serde_json::json!({
        "queue": queue,
        "count": info.count,
        "pending": info.pending,
        "leased": info.leased,
        "max_deliveries": info.max_deliveries,
        "reliable_consumer": info.reliable_consumer,
        "attachments": info.attachments,
        // The proto3 JSON form of a google.protobuf.Duration.
        "ttl": format!("{}s", info.ttl.as_secs()),
        "next_id": info.next_id,
        "pushed": info.pushed,
        "consumed": info.consumed,
    })
}

/// Rows as columns aligned to their widest cell, a header first; the first
/// column left-aligned (names), the others right-aligned (numbers).
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let header = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    let mut out = String::new();
    for row in header.into_iter().chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            // Writing to a String cannot fail.
            let _ = match i {
                0 => write!(line, "{cell:<w$}"),
                _ => write!(line, "  {cell:>w$}"),
            };
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `busmq queues`: one row per queue.
pub fn queues_table(queues: &[ListedQueue]) -> String {
    let rows = queues
        .iter()
        .map(|q| {
            let i = &q.info;
            vec![
                q.name.clone(),
                i.count.to_string(),
                i.pending.to_string(),
                i.leased.to_string(),
                i.attachments.to_string(),
                i.pushed.to_string(),
                i.consumed.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "QUEUE",
            "COUNT",
            "PENDING",
            "LEASED",
            "ATTACHMENTS",
            "PUSHED",
            "CONSUMED",
        ],
        rows,
    )
}

/// `busmq channels`: one row per channel.
pub fn channels_table(channels: &[ListedChannel]) -> String {
    let rows = channels
        .iter()
        .map(|c| vec![c.name.clone(), c.subscribers.to_string()])
        .collect();
    table(&["CHANNEL", "SUBSCRIBERS"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn payloads_stay_on_one_line() {
        assert_eq!(payload_text(b"hello", false), "hello");
        assert_eq!(payload_text(b"a\tb\nc\\d\r", false), "a\\tb\\nc\\\\d\\r");
        assert_eq!(payload_text(b"a\tb\n", true), "a\tb\n");
        assert_eq!(payload_text(&[0x66, 0xff], false), "f\u{fffd}");
        assert_eq!(payload_text("ünï".as_bytes(), false), "ünï");
    }

    #[test]
    fn stats_formats() {
        let info = QueueInfo {
            count: 3,
            ttl: Duration::from_secs(30),
            attachments: 1,
            pending: 2,
            next_id: 4,
            pushed: 3,
            consumed: 0,
            reliable_consumer: true,
            leased: 1,
            max_deliveries: 0,
        };
        let text = stats_text("foo", &info);
        assert!(text.contains("queue              foo\n"), "{text}");
        assert!(text.contains("ttl                30s\n"), "{text}");
        assert!(text.contains("reliable consumer  yes\n"), "{text}");
        assert!(text.contains("max deliveries     unlimited\n"), "{text}");
        assert_eq!(text.lines().count(), 11);

        let json = stats_json("foo", &info);
        assert_eq!(json["count"], 3);
        assert_eq!(json["ttl"], "30s");
        assert_eq!(json["leased"], 1);
        assert_eq!(json["queue"], "foo");
    }

    #[test]
    fn tables_align_their_columns() {
        let queues = [
            ListedQueue {
                name: "a".into(),
                info: QueueInfo {
                    count: 12345,
                    ..QueueInfo::default()
                },
            },
            ListedQueue {
                name: "longer.name".into(),
                info: QueueInfo::default(),
            },
        ];
        let text = queues_table(&queues);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "QUEUE        COUNT  PENDING  LEASED  ATTACHMENTS  PUSHED  CONSUMED"
        );
        assert_eq!(
            lines[1],
            "a            12345        0       0            0       0         0"
        );
        assert!(lines[2].starts_with("longer.name      0"), "{text}");
        let channels = [ListedChannel {
            name: "news".into(),
            subscribers: 2,
        }];
        assert_eq!(
            channels_table(&channels),
            "CHANNEL  SUBSCRIBERS\nnews               2\n"
        );
    }
}
