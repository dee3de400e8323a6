//! The plain-text chart `herald stats` draws under its per-hour table on a terminal: one line
//! an hour, a bar for the success rate and a bar for latency (p50, then on to p99) on a scale
//! shared by every hour shown. ASCII only, so it reads the same in any terminal, log or email.

use serde_json::Value;

/// Cells of the success-rate bar: one per 5 %.
const RATE_CELLS: usize = 20;
/// Cells of the latency bar, the slowest p99 shown filling it.
const LATENCY_CELLS: usize = 24;

/// The chart's lines for the stats API's `by_hour` entries (oldest first); none when no hour
/// has a finished delivery. Hours missing between two shown are marked, not drawn.
pub fn hourly(by_hour: &[Value]) -> Vec<String> {
    let latency = |h: &Value, p: &str| h["latency_ms"][p].as_f64().filter(|v| *v >= 0.0);
    let scale = by_hour
        .iter()
        .filter_map(|h| latency(h, "p99").or_else(|| latency(h, "p50")))
        .fold(0.0_f64, f64::max);
    if by_hour.iter().all(|h| h["success_rate"].as_f64().is_none()) {
        return Vec::new();
    }
    let mut lines = vec![format!(
        "{:<11}  {:<30}  latency: = to p50, - to p99; the bar is {} ms",
        "HOUR (UTC)",
        "success rate: # per 5 %",
        format_ms(scale)
    )];
    let mut previous: Option<i64> = None;
    for hour in by_hour {
        let text = hour["hour"].as_str().unwrap_or_default();
        let at = hour_number(text);
        if let (Some(previous), Some(at)) = (previous, at)
            && at - previous > 1
        {
            let missing = at - previous - 1;
            lines.push(format!(
                "{:<11}  ({missing} hour{} without deliveries)",
                "...",
                if missing == 1 { "" } else { "s" }
            ));
        }
        previous = at.or(previous);

        let rate = hour["success_rate"].as_f64().map(|r| r.clamp(0.0, 1.0));
        let rate_bar = match rate {
            Some(r) => {
                let filled = (r * RATE_CELLS as f64).round() as usize;
                format!(
                    "[{}{}] {:>5.1} %",
                    "#".repeat(filled),
                    ".".repeat(RATE_CELLS - filled),
                    r * 100.0
                )
            }
            None => format!("[{}]     -  ", " ".repeat(RATE_CELLS)),
        };
        let (p50, p99) = (latency(hour, "p50"), latency(hour, "p99"));
        let latency_bar = match p50 {
            Some(p50) if scale > 0.0 => {
                let p99 = p99.unwrap_or(p50).max(p50);
                let to_p50 = cells(p50, scale);
                let to_p99 = cells(p99, scale).max(to_p50);
                format!(
                    "[{}{}{}] {} / {} ms",
                    "=".repeat(to_p50),
                    "-".repeat(to_p99 - to_p50),
                    " ".repeat(LATENCY_CELLS - to_p99),
                    format_ms(p50),
                    format_ms(p99)
                )
            }
            _ => String::new(),
        };
        lines.push(
            format!("{:<11}  {rate_bar}  {latency_bar}", hour_label(text))
                .trim_end()
                .to_owned(),
        );
    }
    lines
}

/// Cells for `value` on a bar where `scale` fills all of them; a value above zero shows.
fn cells(value: f64, scale: f64) -> usize {
    let n = (value / scale * LATENCY_CELLS as f64).round() as usize;
    n.clamp(usize::from(value > 0.0), LATENCY_CELLS)
}

fn format_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

/// `11-29 10:00` from `2026-11-29T10:00:00.000Z`; anything else as it came, made printable.
fn hour_label(hour: &str) -> String {
    match (hour.get(5..10), hour.get(11..16)) {
        (Some(day), Some(time)) if hour_number(hour).is_some() => format!("{day} {time}"),
        _ => super::output::excerpt(hour, 16),
    }
}

/// Hours since the epoch, to see which hours lie between two shown.
fn hour_number(hour: &str) -> Option<i64> {
    crate::event::parse_time(hour).map(|ms| ms.div_euclid(3_600_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hour(at: &str, rate: Option<f64>, p50: Option<f64>, p99: Option<f64>) -> Value {
        json!({"hour": at, "success_rate": rate, "latency_ms": {"p50": p50, "p95": null, "p99": p99}})
    }

    #[test]
    fn bars_share_one_latency_scale_and_gaps_are_marked() {
        let lines = hourly(&[
            hour(
                "2026-11-29T10:00:00.000Z",
                Some(0.75),
                Some(100.0),
                Some(400.0),
            ),
            hour(
                "2026-11-29T11:00:00.000Z",
                Some(1.0),
                Some(200.0),
                Some(800.0),
            ),
            hour("2026-11-29T14:00:00.000Z", Some(0.0), None, None),
        ]);
        assert_eq!(
            lines,
            [
                "HOUR (UTC)   success rate: # per 5 %         latency: = to p50, - to p99; the bar is 800 ms",
                "11-29 10:00  [###############.....]  75.0 %  [===---------            ] 100 / 400 ms",
                "11-29 11:00  [####################] 100.0 %  [======------------------] 200 / 800 ms",
                "...          (2 hours without deliveries)",
                "11-29 14:00  [....................]   0.0 %",
            ]
        );
    }

    #[test]
    fn no_chart_without_a_finished_delivery() {
        assert!(hourly(&[]).is_empty());
        assert!(hourly(&[hour("2026-11-29T10:00:00.000Z", None, None, None)]).is_empty());
    }

    #[test]
    fn server_text_is_never_printed_raw() {
        let lines = hourly(&[hour("\x1b[2Jnot an hour", Some(1.0), Some(1.0), Some(2.0))]);
        assert!(!lines.iter().any(|l| l.contains('\x1b')), "{lines:?}");
    }
}
