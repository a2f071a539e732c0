//! The persistable object commands: object get, object set.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use busmq_client::{Bus, Value};

use crate::{ObjectGetArgs, ObjectSetArgs};

pub async fn get(args: ObjectGetArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.server.server).await?;
    let mut object = bus.persistable(args.name.as_str());
    let loaded = object
        .load()
        .await
        .with_context(|| format!("loading object {}", args.name))?;
    if !loaded.exists {
        anyhow::bail!(
            "object {:?} does not exist (never saved, or expired)",
            args.name
        );
    }
    let json = serde_json::to_string(object.fields()).context("printing the object")?;
    let mut out = io::stdout().lock();
    writeln!(out, "{json}")?;
    out.flush()?;
    Ok(())
}

pub async fn set(args: ObjectSetArgs) -> anyhow::Result<()> {
    // Checked here too, so the error names the argument rather than coming
    // back from the server.
    let value: Value = serde_json::from_str(&args.json).with_context(|| {
        format!(
            "the value of field {:?} is not JSON: {:?} (a string needs quotes: '\"text\"')",
            args.field, args.json
        )
    })?;
    let bus = Bus::connect(&args.server.server).await?;
    let mut object = bus.persistable(args.name.as_str());
    if let Some(ttl) = args.ttl {
        object
            .persist(Duration::from_secs(ttl))
            .await
            .with_context(|| format!("setting the ttl of object {}", args.name))?;
    }
    object.set(args.field.as_str(), value);
    object
        .save()
        .await
        .with_context(|| format!("saving field {} of object {}", args.field, args.name))?;
    // Stop touching: with a ttl the object now expires ttl seconds from
    // this save unless someone else keeps it alive.
    object.unpersist();
    Ok(())
}
