//! The charts on a stream's page: its success rate and its latency (p50, p95, p99) per hour
//! over the last 24 hours or 7 days, chosen with a GET form, from the hourly rollups that
//! `service::stats::stream_stats` reads for the API's `/stats`, so both show the same figures.

use maud::{Markup, html};
use serde::Deserialize;

use super::Refusal;
use super::charts::{self, HourChart, Point, Series, hour_label, millis, percent};
use crate::clock::Millis;
use crate::event::format_time;
use crate::service::stats::{self, StreamStats, Totals};
use crate::service::{self, Caller, Service};

const HOUR_MS: Millis = 3_600_000;

/// The ranges a stream's charts cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Range {
    #[default]
    Day,
    Week,
}

impl Range {
    fn value(self) -> &'static str {
        match self {
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Range::Day => "last 24 hours",
            Range::Week => "last 7 days",
        }
    }

    fn span_ms(self) -> Millis {
        match self {
            Range::Day => 24 * HOUR_MS,
            Range::Week => 7 * 24 * HOUR_MS,
        }
    }
}

/// A stream page's query.
#[derive(Deserialize, Default)]
pub(super) struct RangeQuery {
    range: Option<String>,
}

/// The range asked for, and beside the selector, why an unknown one was not used.
#[derive(Default)]
pub(super) struct Chosen {
    pub range: Range,
    pub error: Option<String>,
}

impl RangeQuery {
    pub fn chosen(&self) -> Chosen {
        match self.range.as_deref() {
            None | Some("") | Some("24h") => Chosen::default(),
            Some("7d") => Chosen {
                range: Range::Week,
                error: None,
            },
            Some(other) => Chosen {
                range: Range::Day,
                error: Some(format!(
                    "“{other}” is not a range these charts can show: choose the last 24 hours \
                     or the last 7 days. The last 24 hours are shown."
                )),
            },
        }
    }
}

/// The charts' section of stream `id`'s page, whose path is `action`.
pub(super) async fn section(
    service: &Service,
    caller: &Caller,
    id: &str,
    action: &str,
    chosen: &Chosen,
) -> Result<Markup, Refusal> {
    let range = chosen.range;
    let from = format_time(service.clock.now_ms() - range.span_ms());
    let stats = match stats::stream_stats(service, caller, id, Some(&from), None).await {
        Ok(stats) => Ok(stats),
        Err(e @ service::Error::MissingScope(_)) => Err(e.to_string()),
        Err(e) => return Err(e.into()),
    };
    Ok(html! {
        section aria-labelledby="charts-heading" {
            h2 #charts-heading { "Deliveries per hour" }
            form.range method="get" action=(action) {
                label for="range" { "Range" }
                select #range name="range"
                    aria-describedby=[chosen.error.as_ref().map(|_| "range-error")] {
                    @for option in [Range::Day, Range::Week] {
                        option value=(option.value()) selected[option == range] {
                            "Last " @if option == Range::Day { "24 hours" } @else { "7 days" }
                        }
                    }
                }
                button type="submit" { "Show" }
            }
            @if let Some(error) = &chosen.error {
                p #range-error .error role="alert" { (error) }
            }
            @match &stats {
                Err(why) => { p.muted { (why) } }
                Ok(stats) => { (charts_of(stats, range)) }
            }
        }
    })
}

/// Each hour of the range in order, with its totals if it had outcomes.
fn hours(stats: &StreamStats) -> Vec<(Millis, Option<&Totals>)> {
    let last = stats.date_to.div_euclid(HOUR_MS) * HOUR_MS;
    (0..)
        .map(|i| stats.date_from + i * HOUR_MS)
        .take_while(|hour| *hour <= last)
        .map(|hour| (hour, stats.by_hour.get(&hour)))
        .collect()
}

fn charts_of(stats: &StreamStats, range: Range) -> Markup {
    let hours = hours(stats);
    let dated = range == Range::Week;
    let words = range.words();
    let total = &stats.total;
    let finished = total.succeeded + total.failed;

    let mut rate_words = Vec::new();
    let rate_points = hours
        .iter()
        .map(|(hour, totals)| {
            let totals = (*totals)?;
            let rate = totals.success_rate()?;
            let label = format!(
                "{}: {} ({} of {})",
                hour_label(*hour, dated),
                percent(rate),
                totals.succeeded,
                totals.succeeded + totals.failed
            );
            rate_words.push(label.clone());
            Some(Point { value: rate, label })
        })
        .collect();
    let overall = match total.success_rate() {
        Some(rate) => format!(
            "Overall {} ({} of {finished} finished deliveries succeeded).",
            percent(rate),
            total.succeeded
        ),
        None => format!("No deliveries finished in the {words}."),
    };
    let success = HourChart {
        id: "success-chart",
        title: format!("Success rate per hour, {words}"),
        description: join(&overall, &rate_words),
        first_hour: stats.date_from,
        y_label: "Success rate",
        y_max: Some(1.0),
        tick: percent,
        series: vec![Series {
            name: "Success rate",
            class: "rate",
            points: rate_points,
        }],
    };

    let quantiles = [(0.50, "p50"), (0.95, "p95"), (0.99, "p99")];
    let mut latency_words = Vec::new();
    for (hour, totals) in &hours {
        let Some(totals) = totals else { continue };
        let figures: Vec<String> = quantiles
            .iter()
            .filter_map(|(q, name)| {
                totals
                    .latency_ms(*q)
                    .map(|v| format!("{name} {}", millis(v)))
            })
            .collect();
        if !figures.is_empty() {
            latency_words.push(format!(
                "{}: {}",
                hour_label(*hour, dated),
                figures.join(", ")
            ));
        }
    }
    let series = quantiles
        .iter()
        .map(|(q, name)| Series {
            name,
            class: name,
            points: hours
                .iter()
                .map(|(hour, totals)| {
                    let value = (*totals)?.latency_ms(*q)?;
                    Some(Point {
                        value,
                        label: format!("{} {name}: {}", hour_label(*hour, dated), millis(value)),
                    })
                })
                .collect(),
        })
        .collect();
    let overall_latency = if total.attempts == 0 {
        format!("No attempts in the {words}.")
    } else {
        format!("{} attempts in all.", total.attempts)
    };
    let latency = HourChart {
        id: "latency-chart",
        title: format!("Latency per hour (p50, p95, p99), {words}"),
        description: join(&overall_latency, &latency_words),
        first_hour: stats.date_from,
        y_label: "Latency (ms)",
        y_max: None,
        tick: axis_millis,
        series,
    };

    html! {
        p.summary {
            @if finished == 0 {
                "No deliveries finished in the " (words) "."
            } @else {
                (total.succeeded) " of " (finished) " finished deliveries succeeded ("
                (percent(total.success_rate().unwrap_or(0.0))) ") in the " (words) "."
            }
            @if let (Some(p50), Some(p95), Some(p99)) =
                (total.latency_ms(0.5), total.latency_ms(0.95), total.latency_ms(0.99)) {
                " Latency of " (total.attempts) " attempts: p50 " (millis(p50)) ", p95 "
                (millis(p95)) ", p99 " (millis(p99)) "."
            }
        }
        div.charts {
            (charts::hour_chart(&success))
            (charts::hour_chart(&latency))
        }
    }
}

/// An axis value in milliseconds, without decimals.
fn axis_millis(ms: f64) -> String {
    format!("{ms:.0} ms")
}

fn join(overall: &str, hours: &[String]) -> String {
    if hours.is_empty() {
        overall.to_string()
    } else {
        format!("{overall} {}.", hours.join("; "))
    }
}
