//! Redis lists as the raw baseline: what the store alone carries with the
//! same workload, no broker, no ids, no acks.

use std::time::Duration;

use anyhow::Context;
use busmq_client::Bytes;
use redis::aio::MultiplexedConnection;

use crate::BenchArgs;
use crate::transport::{Consumer, Producer, Recorder, Ticket, Transport};

/// How long a consumer waits before polling an empty queue again.
const IDLE: Duration = Duration::from_micros(500);

pub struct Redis {
    client: redis::Client,
    setup: MultiplexedConnection,
    /// Messages per `RPOP key COUNT`.
    batch: usize,
    /// `RPOP`s pipelined per round trip, so a consumer asks for up to
    /// `--prefetch` messages at once, as busmq's consumers do.
    depth: usize,
}

impl Redis {
    pub async fn connect(url: &str, args: &BenchArgs) -> anyhow::Result<Redis> {
        let client = redis::Client::open(url).context("parsing the Redis URL")?;
        let setup = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let (batch, depth) = pops(args.batch, args.prefetch as usize);
        Ok(Redis {
            client,
            setup,
            batch,
            depth,
        })
    }
}

/// `RPOP` count and pipeline depth covering `prefetch` messages.
fn pops(batch: usize, prefetch: usize) -> (usize, usize) {
    (batch, prefetch.div_ceil(batch).max(1))
}

impl Transport for Redis {
    type Producer = RedisProducer;
    type Consumer = RedisConsumer;

    async fn prepare(&self, queues: &[String]) -> anyhow::Result<()> {
        let mut conn = self.setup.clone();
        let _: () = redis::cmd("DEL").arg(queues).query_async(&mut conn).await?;
        Ok(())
    }

    async fn producer(&self, queues: Vec<String>) -> anyhow::Result<RedisProducer> {
        let conn = self.client.get_multiplexed_async_connection().await?;
        Ok(RedisProducer { conn, keys: queues })
    }

    async fn consumers(&self, queues: Vec<String>) -> anyhow::Result<Vec<RedisConsumer>> {
        let conn = self.client.get_multiplexed_async_connection().await?;
        Ok(queues
            .into_iter()
            .map(|key| RedisConsumer {
                conn: conn.clone(),
                key,
                batch: self.batch,
                depth: self.depth,
            })
            .collect())
    }

    async fn cleanup(&self, queues: &[String]) {
        let mut conn = self.setup.clone();
        let _: Result<(), _> = redis::cmd("DEL").arg(queues).query_async(&mut conn).await;
    }
}

pub struct RedisProducer {
    conn: MultiplexedConnection,
    keys: Vec<String>,
}

impl Producer for RedisProducer {
    async fn push_batch(
        &mut self,
        queue: usize,
        payload: Bytes,
        count: usize,
    ) -> anyhow::Result<Ticket> {
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(&self.keys[queue]);
        for _ in 0..count {
            cmd.arg(&payload[..]);
        }
        let mut conn = self.conn.clone();
        // Spawned so it is sent now: the multiplexed connection pipelines
        // the batches in flight.
        let sent = tokio::spawn(async move { cmd.query_async::<u64>(&mut conn).await.map(drop) });
        Ok(Box::pin(async move {
            sent.await??;
            Ok(count as u64)
        }))
    }
}

pub struct RedisConsumer {
    conn: MultiplexedConnection,
    key: String,
    batch: usize,
    depth: usize,
}

impl Consumer for RedisConsumer {
    async fn next_batch(&mut self, recorder: &mut Recorder) -> anyhow::Result<bool> {
        let mut pipe = redis::pipe();
        for _ in 0..self.depth {
            pipe.cmd("RPOP").arg(&self.key).arg(self.batch);
        }
        loop {
            let popped: Vec<Option<Vec<Vec<u8>>>> = pipe.query_async(&mut self.conn).await?;
            let mut any = false;
            for payload in popped.iter().flatten().flatten() {
                recorder.record(payload);
                any = true;
            }
            if any {
                return Ok(true);
            }
            tokio::time::sleep(IDLE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_cover_the_prefetch() {
        assert_eq!(pops(64, 1024), (64, 16));
        assert_eq!(pops(64, 100), (64, 2));
        assert_eq!(pops(64, 1), (64, 1));
    }
}
