//! RabbitMQ through lapin: durable queues, persistent messages, publisher
//! confirms, manual acks (one `multiple` ack per received batch) and a
//! prefetch window (`basic.qos`) per consumer.

use anyhow::{Context, bail};
use busmq_client::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::BenchArgs;
use crate::transport::{Consumer, Producer, Recorder, Ticket, Transport};

/// AMQP delivery mode of a message written to disk.
const PERSISTENT: u8 = 2;

pub struct Rabbitmq {
    url: String,
    setup: Channel,
    _connection: Connection,
    prefetch: u16,
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}"))
}

impl Rabbitmq {
    pub async fn connect(url: &str, args: &BenchArgs) -> anyhow::Result<Rabbitmq> {
        let connection = connect(url).await?;
        let setup = connection.create_channel().await?;
        Ok(Rabbitmq {
            url: url.to_owned(),
            setup,
            _connection: connection,
            prefetch: args.prefetch.min(u16::MAX as u32) as u16,
        })
    }
}

impl Transport for Rabbitmq {
    type Producer = RabbitmqProducer;
    type Consumer = RabbitmqConsumer;

    async fn prepare(&self, queues: &[String]) -> anyhow::Result<()> {
        for queue in queues {
            self.setup
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    async fn producer(&self, queues: Vec<String>) -> anyhow::Result<RabbitmqProducer> {
        let connection = connect(&self.url).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(RabbitmqProducer {
            _connection: connection,
            channel,
            queues,
        })
    }

    async fn consumers(&self, queues: Vec<String>) -> anyhow::Result<Vec<RabbitmqConsumer>> {
        let connection = std::sync::Arc::new(connect(&self.url).await?);
        let mut consumers = Vec::with_capacity(queues.len());
        for queue in queues {
            // A channel per queue: a `multiple` ack covers one consumer's
            // deliveries only.
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let deliveries = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("bench-{queue}").as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            consumers.push(RabbitmqConsumer {
                _connection: std::sync::Arc::clone(&connection),
                _channel: channel,
                deliveries,
            });
        }
        Ok(consumers)
    }

    async fn cleanup(&self, queues: &[String]) {
        for queue in queues {
            let _ = self
                .setup
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

pub struct RabbitmqProducer {
    _connection: Connection,
    channel: Channel,
    queues: Vec<String>,
}

impl Producer for RabbitmqProducer {
    async fn push_batch(
        &mut self,
        queue: usize,
        payload: Bytes,
        count: usize,
    ) -> anyhow::Result<Ticket> {
        let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        let mut confirms = Vec::with_capacity(count);
        for _ in 0..count {
            confirms.push(
                self.channel
                    .basic_publish(
                        "".into(),
                        self.queues[queue].as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        properties.clone(),
                    )
                    .await?,
            );
        }
        Ok(Box::pin(async move {
            for confirm in confirms {
                if !confirm.await?.is_ack() {
                    bail!("RabbitMQ refused a message (nack)");
                }
            }
            Ok(count as u64)
        }))
    }
}

pub struct RabbitmqConsumer {
    _connection: std::sync::Arc<Connection>,
    _channel: Channel,
    deliveries: lapin::Consumer,
}

impl Consumer for RabbitmqConsumer {
    async fn next_batch(&mut self, recorder: &mut Recorder) -> anyhow::Result<bool> {
        let Some(first) = self.deliveries.next().await else {
            return Ok(false);
        };
        let mut last = first?;
        recorder.record(&last.data);
        // Everything already received is this batch.
        while let Some(Some(next)) = self.deliveries.next().now_or_never() {
            last = next?;
            recorder.record(&last.data);
        }
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        Ok(true)
    }
}
