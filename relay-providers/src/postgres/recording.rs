//! Probe recordings in PostgreSQL, beside the records and the audit log
//! ([`relay_core::recording`]).

use async_trait::async_trait;
use relay_core::recording::{RecordedSample, Recording, RecordingSink};
use relay_core::{Error, Result};

use super::{db_err, Postgres, PROVIDER};

/// A [`RecordingSink`] in the `recordings` table: every sample a
/// [`relay_core::recording::RecordingProbe`] hands it, under its rollout,
/// in the order they came — from any number of engines and processes. A
/// role that may only read and write rows can use it.
#[derive(Clone, Debug)]
pub struct PostgresRecording {
    pg: Postgres,
}

impl PostgresRecording {
    /// Recordings in `pg`'s schema.
    pub fn new(pg: Postgres) -> Self {
        PostgresRecording { pg }
    }

    /// What was recorded of `rollout`, in order, as a [`Recording`]
    /// named after it.
    ///
    /// # Errors
    /// The database's errors; a row that is not a sample is
    /// [`Error::InvalidSpec`] naming it.
    pub async fn recording(&self, rollout: &str) -> Result<Recording> {
        let s = &self.pg.schema;
        let client = self.pg.client().await?;
        let rows = client
            .query(
                &format!("SELECT seq, sample FROM {s}.recordings WHERE rollout = $1 ORDER BY seq"),
                &[&rollout],
            )
            .await
            .map_err(|e| db_err("read a recording", e))?;
        let samples = rows
            .iter()
            .map(|row| {
                let seq: i64 = row.get(0);
                serde_json::from_value(row.get::<_, serde_json::Value>(1)).map_err(|e| {
                    Error::invalid(
                        format!("{s}.recordings[{rollout}, {seq}]"),
                        format!("not a recorded sample: {e}"),
                    )
                })
            })
            .collect::<Result<Vec<RecordedSample>>>()?;
        Ok(Recording::new(rollout, samples))
    }
}

#[async_trait]
impl RecordingSink for PostgresRecording {
    async fn record(&self, sample: &RecordedSample) -> Result<()> {
        let s = &self.pg.schema;
        let json = serde_json::to_value(sample).map_err(|e| Error::provider(PROVIDER, false, e.to_string()))?;
        let client = self.pg.client().await?;
        client
            .execute(
                &format!("INSERT INTO {s}.recordings (rollout, sample) VALUES ($1, $2)"),
                &[&sample.rollout, &json],
            )
            .await
            .map_err(|e| db_err("record a sample", e))?;
        Ok(())
    }
}
