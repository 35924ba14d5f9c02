//! Freeze windows: times when nothing starts or is promoted.

use async_trait::async_trait;
pub use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

use crate::clock::UnixMillis;
use crate::error::{Error, Result};
use crate::gate::{Gate, GateContext, GateDecision};

const MINUTES_PER_WEEK: i64 = 7 * 24 * 60;

/// When a freeze applies.
#[derive(Clone, Debug)]
enum When {
    /// From `start` (inclusive) to `end` (exclusive).
    Between { start: Timestamp, end: Timestamp },
    /// Every week from one wall-clock time to another, in a time zone (the
    /// end may be in the next week: Friday 16:00 to Monday 08:00).
    Weekly {
        tz: TimeZone,
        tz_name: String,
        from: i64,
        to: i64,
    },
}

/// One named freeze window.
#[derive(Clone, Debug)]
pub struct FreezeWindow {
    name: String,
    when: When,
}

fn minute_of_week(day: Weekday, hour: i8, minute: i8) -> i64 {
    i64::from(day.to_monday_zero_offset()) * 24 * 60 + i64::from(hour) * 60 + i64::from(minute)
}

fn wall_time(field: &str, (day, hour, minute): (Weekday, i8, i8)) -> Result<i64> {
    if !(0..24).contains(&hour) || !(0..60).contains(&minute) {
        return Err(Error::invalid(
            field,
            format!("{hour:02}:{minute:02} is not a time of day"),
        ));
    }
    Ok(minute_of_week(day, hour, minute))
}

impl FreezeWindow {
    /// A one-off window between two RFC 3339 instants
    /// (`2026-12-24T00:00:00Z`, `2026-12-27T00:00:00+01:00`).
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `freeze.<name>.start`/`.end`.
    pub fn between(name: impl Into<String>, start: &str, end: &str) -> Result<Self> {
        let name = name.into();
        let parse = |field: &str, s: &str| {
            let ms = crate::clock::parse_rfc3339(&format!("freeze.{name}.{field}"), s)?;
            Timestamp::from_millisecond(ms).map_err(|e| Error::invalid(format!("freeze.{name}.{field}"), e.to_string()))
        };
        let (start, end) = (parse("start", start)?, parse("end", end)?);
        if end <= start {
            return Err(Error::invalid(format!("freeze.{name}.end"), "must be after the start"));
        }
        Ok(FreezeWindow {
            name,
            when: When::Between { start, end },
        })
    }

    /// A window every week from `from` to `to` (weekday, hour, minute) in
    /// time zone `tz` (`Europe/Berlin`, `UTC`); wall-clock times, so it
    /// follows daylight saving.
    ///
    /// # Errors
    /// [`Error::InvalidSpec`] naming `freeze.<name>.time_zone`, `.from` or
    /// `.to`.
    pub fn weekly(name: impl Into<String>, tz: &str, from: (Weekday, i8, i8), to: (Weekday, i8, i8)) -> Result<Self> {
        let name = name.into();
        let zone = TimeZone::get(tz).map_err(|e| {
            Error::invalid(
                format!("freeze.{name}.time_zone"),
                format!("{tz:?} is not a known time zone (like Europe/Berlin or UTC): {e}"),
            )
        })?;
        let (from, to) = (
            wall_time(&format!("freeze.{name}.from"), from)?,
            wall_time(&format!("freeze.{name}.to"), to)?,
        );
        if from == to {
            return Err(Error::invalid(
                format!("freeze.{name}.to"),
                "must differ from the start",
            ));
        }
        Ok(FreezeWindow {
            name,
            when: When::Weekly {
                tz: zone,
                tz_name: tz.to_owned(),
                from,
                to,
            },
        })
    }

    /// The window's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// If `now` is inside the window, when it ends.
    pub fn active_until(&self, now: Timestamp) -> Option<Zoned> {
        match &self.when {
            When::Between { start, end } => (*start <= now && now < *end).then(|| end.to_zoned(TimeZone::UTC)),
            When::Weekly { tz, from, to, .. } => {
                let local = now.to_zoned(tz.clone());
                let m = minute_of_week(local.weekday(), local.hour(), local.minute());
                let inside = if from < to {
                    *from <= m && m < *to
                } else {
                    m >= *from || m < *to
                };
                if !inside {
                    return None;
                }
                let ahead = (to - m).rem_euclid(MINUTES_PER_WEEK);
                let end = local
                    .checked_add(jiff::Span::new().minutes(ahead))
                    .ok()?
                    .with()
                    .second(0)
                    .subsec_nanosecond(0)
                    .build()
                    .ok()?;
                Some(end)
            }
        }
    }

    fn describe(&self) -> String {
        match &self.when {
            When::Between { start, end } => format!("{} ({start} to {end})", self.name),
            When::Weekly { tz_name, .. } => format!("{} (weekly, {tz_name})", self.name),
        }
    }
}

/// A [`Gate`] that refuses while any of its freeze windows is active, naming
/// the window and when it ends. Put it before start and before promotion
/// ([`crate::RolloutSpec::gate_before_start`],
/// [`crate::RolloutSpec::gate_before_promotion`]).
///
/// An emergency override is an approval of this gate by a named person
/// ([`crate::RolloutSpec::approve`] before start,
/// [`crate::RolloutControl::approve`] during a rollout); the engine audits
/// it, and the gate passes saying who overrode which window.
#[derive(Clone, Debug)]
pub struct FreezeGate {
    name: String,
    windows: Vec<FreezeWindow>,
}

impl FreezeGate {
    /// A gate called `name` over `windows`.
    pub fn new(name: impl Into<String>, windows: Vec<FreezeWindow>) -> Self {
        FreezeGate {
            name: name.into(),
            windows,
        }
    }

    /// The window active at `now_ms` and its end, if any.
    pub fn active(&self, now_ms: UnixMillis) -> Option<(&FreezeWindow, Zoned)> {
        let now = Timestamp::from_millisecond(now_ms).ok()?;
        self.windows
            .iter()
            .find_map(|w| w.active_until(now).map(|end| (w, end)))
    }
}

#[async_trait]
impl Gate for FreezeGate {
    fn name(&self) -> &str {
        &self.name
    }

    async fn check(&self, ctx: &GateContext) -> Result<GateDecision> {
        let Some((window, end)) = self.active(ctx.now_ms) else {
            return Ok(GateDecision::Pass {
                by: format!("{}: no freeze window active", self.name),
            });
        };
        let overridden = ctx
            .approvals
            .iter()
            .rev()
            .find(|a| a.gate == self.name && a.approved && !a.by.trim().is_empty());
        Ok(match overridden {
            Some(a) => GateDecision::Pass {
                by: format!(
                    "emergency override of freeze window {} by {} ({})",
                    window.name, a.by, a.comment
                ),
            },
            None => GateDecision::Fail {
                reason: format!(
                    "freeze window {} is active until {end}; wait, or override with a named approver",
                    window.describe()
                ),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::Approval;

    fn at(s: &str) -> UnixMillis {
        s.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn ctx(now: &str, approvals: Vec<Approval>) -> GateContext {
        GateContext {
            rollout: "r".into(),
            target: "web".into(),
            candidate: "rev-1".into(),
            digest: "sha256:00".into(),
            step: 0,
            approvals,
            now_ms: at(now),
            waiting_since_ms: at(now),
            started_by: None,
        }
    }

    #[tokio::test]
    async fn a_weekend_freeze_in_berlin_follows_wall_time_and_names_its_end() {
        let gate = FreezeGate::new(
            "freeze",
            vec![FreezeWindow::weekly(
                "weekend",
                "Europe/Berlin",
                (Weekday::Friday, 16, 0),
                (Weekday::Monday, 8, 0),
            )
            .unwrap()],
        );
        // Friday 2026-11-27 15:59 Berlin (UTC+1) is before the freeze.
        let d = gate.check(&ctx("2026-11-27T14:59:00Z", vec![])).await.unwrap();
        assert!(matches!(d, GateDecision::Pass { .. }), "{d:?}");
        // Saturday: frozen until Monday 08:00 Berlin.
        match gate.check(&ctx("2026-11-28T12:00:00Z", vec![])).await.unwrap() {
            GateDecision::Fail { reason } => {
                assert!(
                    reason.contains("weekend") && reason.contains("2026-11-30T08:00:00+01:00"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // Monday 08:00 Berlin is open again.
        let d = gate.check(&ctx("2026-11-30T07:00:00Z", vec![])).await.unwrap();
        assert!(matches!(d, GateDecision::Pass { .. }), "{d:?}");
        // In summer Berlin is UTC+2: Friday 16:00 local is 14:00 UTC.
        let d = gate.check(&ctx("2026-07-03T14:30:00Z", vec![])).await.unwrap();
        assert!(matches!(d, GateDecision::Fail { .. }), "{d:?}");
    }

    #[tokio::test]
    async fn an_override_needs_a_named_approver() {
        let gate = FreezeGate::new(
            "freeze",
            vec![FreezeWindow::between("holidays", "2026-12-24T00:00:00Z", "2026-12-27T00:00:00Z").unwrap()],
        );
        let approval = |by: &str| Approval {
            gate: "freeze".into(),
            by: by.into(),
            comment: "hotfix for INC-42".into(),
            approved: true,
            at_ms: 0,
            step: None,
        };
        let d = gate
            .check(&ctx("2026-12-25T10:00:00Z", vec![approval(" ")]))
            .await
            .unwrap();
        assert!(
            matches!(&d, GateDecision::Fail { reason } if reason.contains("holidays")),
            "{d:?}"
        );
        match gate
            .check(&ctx("2026-12-25T10:00:00Z", vec![approval("alice")]))
            .await
            .unwrap()
        {
            GateDecision::Pass { by } => assert!(
                by.contains("alice") && by.contains("holidays") && by.contains("INC-42"),
                "{by}"
            ),
            other => panic!("{other:?}"),
        }
        let d = gate.check(&ctx("2026-12-27T00:00:00Z", vec![])).await.unwrap();
        assert!(matches!(d, GateDecision::Pass { .. }), "the end is exclusive: {d:?}");
    }

    #[test]
    fn bad_windows_name_their_field() {
        let e =
            FreezeWindow::weekly("w", "Mars/Olympus", (Weekday::Monday, 0, 0), (Weekday::Tuesday, 0, 0)).unwrap_err();
        assert!(e.to_string().contains("freeze.w.time_zone"), "{e}");
        let e = FreezeWindow::weekly("w", "UTC", (Weekday::Monday, 25, 0), (Weekday::Tuesday, 0, 0)).unwrap_err();
        assert!(e.to_string().contains("freeze.w.from"), "{e}");
        let e = FreezeWindow::between("h", "2026-12-27T00:00:00Z", "2026-12-24T00:00:00Z").unwrap_err();
        assert!(e.to_string().contains("freeze.h.end"), "{e}");
        let e = FreezeWindow::between("h", "christmas", "2026-12-24T00:00:00Z").unwrap_err();
        assert!(e.to_string().contains("freeze.h.start"), "{e}");
    }
}
