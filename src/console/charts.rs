//! Charts drawn on the server as inline SVG, so they need no script and no asset: a sparkline
//! for a row of a list, and line charts of figures per hour with labelled axes, hours in UTC.
//! To assistive technology each chart is one image (`role="img"`) whose title and
//! description state its figures, and each point carries a title of its own; so do tests,
//! which read figures rather than pixels. Colours come from the stylesheet's classes. Every
//! label goes through maud, which escapes it.

use maud::{Markup, html};

use crate::clock::Millis;
use crate::event::format_time;
use crate::store::HourOutcomes;

const HOUR_MS: Millis = 3_600_000;

// The drawing area of an hourly chart, in SVG user units; the stylesheet scales it to fit.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 44.0;

/// One value of a series, and what its point says when hovered or read out.
pub struct Point {
    pub value: f64,
    pub label: String,
}

/// A line across the hours: `None` where there is no figure (the line breaks there).
pub struct Series {
    /// Its name in the chart's legend.
    pub name: &'static str,
    /// The stylesheet class that colours it.
    pub class: &'static str,
    pub points: Vec<Option<Point>>,
}

/// A chart of figures per hour.
pub struct HourChart<'a> {
    /// Unique on the page: the ids of the chart's title and description derive from it.
    pub id: &'a str,
    pub title: String,
    /// Every figure the chart shows, in words.
    pub description: String,
    /// The start of the first hour; each series has one slot per hour from there.
    pub first_hour: Millis,
    pub y_label: &'a str,
    /// The top of the value axis; `None` rounds the largest value up.
    pub y_max: Option<f64>,
    /// How a value on the axis reads (`50%`, `200 ms`).
    pub tick: fn(f64) -> String,
    pub series: Vec<Series>,
}

/// A value as a percentage: whole when it is, else to a tenth.
pub fn percent(share: f64) -> String {
    let p = share * 100.0;
    if (p - p.round()).abs() < 0.05 {
        format!("{:.0}%", p)
    } else {
        format!("{:.1}%", p)
    }
}

/// Milliseconds as a person reads them: whole when they are, else to a tenth.
pub fn millis(ms: f64) -> String {
    if ms.fract() == 0.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// An hour's start as `HH:00 UTC`, with its date when `dated`.
pub fn hour_label(hour: Millis, dated: bool) -> String {
    let time = format_time(hour);
    if dated {
        format!("{} {} UTC", &time[..10], &time[11..16])
    } else {
        format!("{} UTC", &time[11..16])
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `max`.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * magnitude)
}

fn coordinate(v: f64) -> String {
    format!("{v:.1}")
}

/// Consecutive points with figures, as `x,y` pairs: each is drawn as one line.
fn runs(points: &[Option<(f64, f64)>]) -> Vec<String> {
    let mut runs = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for point in points {
        match point {
            Some((x, y)) => current.push(format!("{},{}", coordinate(*x), coordinate(*y))),
            None if !current.is_empty() => runs.push(std::mem::take(&mut current).join(" ")),
            None => {}
        }
    }
    if !current.is_empty() {
        runs.push(current.join(" "));
    }
    runs
}

/// A line chart of `chart`'s series per hour, with its axes, and a legend when it has more
/// than one series.
pub fn hour_chart(chart: &HourChart) -> Markup {
    let slots = chart
        .series
        .iter()
        .map(|s| s.points.len())
        .max()
        .unwrap_or(0);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let largest = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().flatten())
        .map(|p| p.value)
        .fold(0.0, f64::max);
    let y_max = chart.y_max.unwrap_or_else(|| nice_ceiling(largest));
    let x = |i: usize| LEFT + (i as f64 + 0.5) * plot_width / slots.max(1) as f64;
    let y = |v: f64| TOP + plot_height - (v / y_max).clamp(0.0, 1.0) * plot_height;
    // A label every 6 hours over a day, every day (at midnight UTC) over longer.
    let (step, dated) = if slots <= 25 { (6, false) } else { (24, true) };
    let ticks: Vec<(usize, String)> = (0..slots)
        .filter_map(|i| {
            let hour = chart.first_hour + i as Millis * HOUR_MS;
            let of_day = hour.div_euclid(HOUR_MS).rem_euclid(24);
            (of_day % step == 0).then(|| {
                let time = format_time(hour);
                let text = if dated {
                    time[5..10].to_string()
                } else {
                    time[11..16].to_string()
                };
                (i, text)
            })
        })
        .collect();
    let title_id = format!("{}-title", chart.id);
    let description_id = format!("{}-description", chart.id);
    let empty = largest == 0.0
        && chart
            .series
            .iter()
            .all(|s| s.points.iter().all(Option::is_none));
    html! {
        figure.chart {
            svg id=(chart.id) role="img" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
                aria-labelledby={ (title_id) " " (description_id) } {
                title id=(title_id) { (chart.title) }
                desc id=(description_id) { (chart.description) }
                g.grid {
                    @for fraction in [0.0, 0.5, 1.0] {
                        @let at = y(fraction * y_max);
                        line x1=(coordinate(LEFT)) x2=(coordinate(WIDTH - RIGHT))
                            y1=(coordinate(at)) y2=(coordinate(at)) {}
                        text.tick x=(coordinate(LEFT - 6.0)) y=(coordinate(at + 4.0))
                            text-anchor="end" { ((chart.tick)(fraction * y_max)) }
                    }
                }
                g.axis {
                    line x1=(coordinate(LEFT)) x2=(coordinate(WIDTH - RIGHT))
                        y1=(coordinate(TOP + plot_height)) y2=(coordinate(TOP + plot_height)) {}
                    @for (i, text) in &ticks {
                        line x1=(coordinate(x(*i))) x2=(coordinate(x(*i)))
                            y1=(coordinate(TOP + plot_height)) y2=(coordinate(TOP + plot_height + 4.0)) {}
                        text.tick x=(coordinate(x(*i))) y=(coordinate(TOP + plot_height + 17.0))
                            text-anchor="middle" { (text) }
                    }
                    text.label x=(coordinate(LEFT + plot_width / 2.0)) y=(coordinate(HEIGHT - 4.0))
                        text-anchor="middle" {
                        @if dated { "Day (UTC), a point per hour" } @else { "Hour (UTC)" }
                    }
                    text.label x="0" y="0" text-anchor="middle"
                        transform={ "translate(12 " (coordinate(TOP + plot_height / 2.0)) ") rotate(-90)" } {
                        (chart.y_label)
                    }
                }
                @if empty {
                    text.note x=(coordinate(LEFT + plot_width / 2.0)) y=(coordinate(TOP + plot_height / 2.0))
                        text-anchor="middle" { "No deliveries finished in this range" }
                }
                @for series in &chart.series {
                    @let placed: Vec<Option<(f64, f64)>> = series.points.iter().enumerate()
                        .map(|(i, p)| p.as_ref().map(|p| (x(i), y(p.value)))).collect();
                    g class={ "series " (series.class) } {
                        @for run in runs(&placed) {
                            polyline points=(run) {}
                        }
                        @for (i, point) in series.points.iter().enumerate() {
                            @if let Some(point) = point {
                                circle cx=(coordinate(x(i))) cy=(coordinate(y(point.value))) r="2.5" {
                                    title { (point.label) }
                                }
                            }
                        }
                    }
                }
            }
            @if chart.series.len() > 1 {
                figcaption {
                    ul.legend {
                        @for series in &chart.series {
                            li { span class={ "swatch " (series.class) } {} (series.name) }
                        }
                    }
                }
            }
        }
    }
}

/// A small line of shares (0 to 1) per hour, for a list row; `label` says its figures.
pub fn sparkline(shares: &[Option<f64>], label: &str) -> Markup {
    const W: f64 = 100.0;
    const H: f64 = 24.0;
    let n = shares.len().max(1) as f64;
    let placed: Vec<Option<(f64, f64)>> = shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            share.map(|s| {
                (
                    (i as f64 + 0.5) * W / n,
                    2.0 + (1.0 - s.clamp(0.0, 1.0)) * (H - 4.0),
                )
            })
        })
        .collect();
    html! {
        svg.sparkline role="img" aria-label=(label) viewBox={ "0 0 " (W) " " (H) } {
            title { (label) }
            line.baseline x1="0" x2=(W) y1=(H - 2.0) y2=(H - 2.0) {}
            @for run in runs(&placed) {
                polyline points=(run) {}
            }
            // A lone hour makes no line: a dot shows it.
            @for (x, y) in placed.iter().flatten() {
                circle cx=(coordinate(*x)) cy=(coordinate(*y)) r="1.5" {}
            }
        }
    }
}

/// A stream's finished deliveries in each hour of the last 24 (as the list shows them), or
/// why the caller cannot see them.
pub type RecentView = Result<Vec<HourOutcomes>, String>;

/// A list row's success rate over the last 24 hours, in figures and as a sparkline.
pub fn recent_success(recent: &RecentView) -> Markup {
    let hours = match recent {
        Ok(hours) => hours,
        Err(why) => return html! { span.muted title=(why) { "–" } },
    };
    let succeeded: u64 = hours.iter().map(|h| h.succeeded).sum();
    let finished: u64 = hours.iter().map(|h| h.succeeded + h.failed).sum();
    if finished == 0 {
        return html! {
            span.muted title="No deliveries finished in the last 24 hours" { "–" }
        };
    }
    let rate = percent(succeeded as f64 / finished as f64);
    let label = format!(
        "Success rate over the last 24 hours: {rate} ({succeeded} of {finished} finished \
         deliveries succeeded)"
    );
    let shares: Vec<Option<f64>> = hours
        .iter()
        .map(|h| {
            let n = h.succeeded + h.failed;
            (n > 0).then(|| h.succeeded as f64 / n as f64)
        })
        .collect();
    html! {
        span.rate { (rate) }
        (sparkline(&shares, &label))
        span.reason { (succeeded) " of " (finished) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(percent(0.75), "75%");
        assert_eq!(percent(2.0 / 3.0), "66.7%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(millis(980.0), "980 ms");
        assert_eq!(millis(12.5), "12.5 ms");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(980.0), 1000.0);
        assert_eq!(nice_ceiling(1001.0), 2000.0);
        assert_eq!(nice_ceiling(30.0), 50.0);
    }

    #[test]
    fn lines_break_where_an_hour_has_no_figure() {
        let points = [Some((1.0, 2.0)), Some((3.0, 4.0)), None, Some((5.0, 6.0))];
        assert_eq!(runs(&points), ["1.0,2.0 3.0,4.0", "5.0,6.0"]);
    }

    #[test]
    fn labels_are_escaped() {
        let svg = sparkline(&[Some(1.0)], "<script>alert(1)</script>").into_string();
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("<script>"), "{svg}");
    }
}
