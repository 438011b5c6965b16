//! Durable state beyond streams and media: signaling channels and the per-stream configurations (image
//! generation, notification, edge). It lives in two tables of the index database (`index.redb`), so it shares the
//! stream index's crash safety: a record is either committed whole or absent.
//!
//! Stream configurations are keyed by the stream's ARN rather than its id. An ARN ends with the creation time, so
//! a stream deleted and created again under the same name never inherits the old stream's configurations; rows of
//! deleted streams are left in place and ignored (readers reach rows through live streams or check the registry).

use std::collections::BTreeMap;

use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StoreError;

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("signaling_channels");
const STREAM_CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("stream_configurations");

/// Which table a record lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// [`ChannelRecord`] by channel name.
    Channels,
    /// [`StreamConfigs`] by stream ARN.
    StreamConfigs,
}

impl Table {
    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Channels => CHANNELS,
            Table::StreamConfigs => STREAM_CONFIGS,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Table::Channels => "signaling channel record",
            Table::StreamConfigs => "stream configuration record",
        }
    }
}

/// A signaling channel as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub name: String,
    pub arn: String,
    pub channel_type: String,
    pub message_ttl_seconds: u32,
    pub version: String,
    pub creation_time_ms: u64,
    pub tags: BTreeMap<String, String>,
    /// UpdateMediaStorageConfiguration's last value; `None` until it is first called (described as DISABLED).
    pub media_storage: Option<MediaStorage>,
}

/// A channel's media storage configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaStorage {
    /// `ENABLED` or `DISABLED`.
    pub status: String,
    pub stream_arn: Option<String>,
}

/// The configurations of one stream, each as the JSON structure the Describe operation returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamConfigs {
    pub image_generation: Option<Value>,
    pub notification: Option<Value>,
    pub edge: Option<EdgeRecord>,
}

impl StreamConfigs {
    pub fn is_empty(&self) -> bool {
        self.image_generation.is_none() && self.notification.is_none() && self.edge.is_none()
    }
}

/// What the last edge request asked for; the sync status shown is derived from it and the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeRequest {
    /// StartEdgeConfigurationUpdate: the configuration waits for the Edge Agent.
    Sync,
    /// DeleteEdgeConfiguration: the configuration is being removed.
    Delete,
}

/// A stream's edge configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub stream_name: String,
    pub hub_device_arn: String,
    /// The EdgeConfig structure as accepted.
    pub config: Value,
    pub creation_time_ms: u64,
    pub last_updated_ms: u64,
    pub request: EdgeRequest,
}

fn decode<R: DeserializeOwned>(table: Table, bytes: &[u8]) -> Result<R, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", table.what())))
}

/// A table for reading; `None` until the first write creates it.
fn open_read(
    txn: &redb::ReadTransaction,
    table: Table,
) -> Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>, StoreError> {
    match txn.open_table(table.definition()) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One record (blocking).
pub fn get<R: DeserializeOwned>(
    db: &Database,
    table: Table,
    key: &str,
) -> Result<Option<R>, StoreError> {
    let txn = db.begin_read()?;
    let Some(t) = open_read(&txn, table)? else {
        return Ok(None);
    };
    match t.get(key)? {
        Some(v) => decode(table, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Every record of a table in key order (blocking).
pub fn all<R: DeserializeOwned>(
    db: &Database,
    table: Table,
) -> Result<Vec<(String, R)>, StoreError> {
    let txn = db.begin_read()?;
    let Some(t) = open_read(&txn, table)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((k.value().to_owned(), decode(table, v.value())?));
    }
    Ok(out)
}

/// Inserts or replaces a record, or removes it when `value` is `None` (blocking; one committed transaction).
pub fn put<R: Serialize>(
    db: &Database,
    table: Table,
    key: &str,
    value: Option<&R>,
) -> Result<(), StoreError> {
    let bytes = value
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", table.what())))?;
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(table.definition())?;
        match &bytes {
            Some(b) => {
                t.insert(key, b.as_slice())?;
            }
            None => {
                t.remove(key)?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopening_and_removal_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.redb");
        let rec = ChannelRecord {
            name: "ch".into(),
            arn: "arn:aws:kinesisvideo:us-east-1:123456789012:channel/ch/1".into(),
            channel_type: "SINGLE_MASTER".into(),
            message_ttl_seconds: 60,
            version: "v1".into(),
            creation_time_ms: 1,
            tags: BTreeMap::from([("k".into(), "v".into())]),
            media_storage: None,
        };
        {
            let db = Database::create(&path).unwrap();
            put(&db, Table::Channels, "ch", Some(&rec)).unwrap();
            put(&db, Table::Channels, "gone", Some(&rec)).unwrap();
            put::<ChannelRecord>(&db, Table::Channels, "gone", None).unwrap();
        }
        let db = Database::create(&path).unwrap();
        let got: Option<ChannelRecord> = get(&db, Table::Channels, "ch").unwrap();
        assert_eq!(got, Some(rec));
        let rows: Vec<(String, ChannelRecord)> = all(&db, Table::Channels).unwrap();
        assert_eq!(rows.len(), 1, "the removed record stays removed");
        let none: Option<StreamConfigs> = get(&db, Table::StreamConfigs, "x").unwrap();
        assert!(none.is_none());
    }
}
