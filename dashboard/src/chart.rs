//! Line charts as inline SVG, drawn on the server (no chart library, no script).

use maud::{Markup, html};

/// Series colours, in order (readable on white, distinct for the common few queues); the legend
/// uses the same list as classes `c0`… in style.css (no inline styles: the CSP forbids them).
const COLOURS: [&str; 8] = [
    "#6d3df2", "#1f8a4c", "#c7352b", "#b7791f", "#2b6cb0", "#9c4221", "#2c7a7b", "#6b46c1",
];

const W: f64 = 600.0;
const H: f64 = 180.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 10.0;

/// One line: a label and one value per bucket (None: no data in that bucket).
pub struct Series {
    pub label: String,
    pub values: Vec<Option<f64>>,
}

/// How a chart's x axis and empty legend read.
pub struct Axis<'a> {
    /// The left end of the x axis ("60 min ago").
    pub from: &'a str,
    /// The legend when there is no series ("no finished jobs in this window").
    pub empty: &'a str,
}

/// A chart of `series` over `buckets` buckets, the last one being "now"; `unit` labels the y
/// axis ticks ("/min", "ms").
pub fn line_chart(
    title: &str,
    unit: &str,
    buckets: usize,
    axis: &Axis,
    series: &[Series],
) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |m, v| m.max(*v));
    let top = nice_ceiling(max);
    let x = |i: usize| LEFT + (W - LEFT - 4.0) * (i as f64) / ((buckets.max(2) - 1) as f64);
    let y = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v / top);
    let ticks = [0.0, top / 2.0, top];
    html! {
        div.chart {
            strong { (title) }
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-label=(title) {
                @for t in ticks {
                    line x1=(LEFT) x2=(W - 4.0) y1=(y(t)) y2=(y(t)) stroke="#e2e2ea" {}
                    text x=(LEFT - 6.0) y=(y(t) + 4.0) text-anchor="end" font-size="10" fill="#6b6b80" {
                        (fmt_tick(t)) (unit)
                    }
                }
                text x=(LEFT) y=(H - 6.0) font-size="10" fill="#6b6b80" { (axis.from) }
                text x=(W - 4.0) y=(H - 6.0) text-anchor="end" font-size="10" fill="#6b6b80" { "now" }
                @for (n, s) in series.iter().enumerate() {
                    @let colour = COLOURS[n % COLOURS.len()];
                    @for run in runs(&s.values) {
                        polyline fill="none" stroke=(colour) stroke-width="1.8"
                            points=(run.iter().map(|(i, v)| format!("{:.1},{:.1}", x(*i), y(*v))).collect::<Vec<_>>().join(" ")) {}
                        @if run.len() == 1 {
                            circle cx=(x(run[0].0)) cy=(y(run[0].1)) r="2.5" fill=(colour) {}
                        }
                    }
                }
            }
            div.legend {
                @if series.is_empty() {
                    span.muted { (axis.empty) }
                }
                @for (n, s) in series.iter().enumerate() {
                    span { i class=(format!("c{}", n % COLOURS.len())) {} (s.label) }
                }
            }
        }
    }
}

/// Consecutive buckets with data, so that gaps show as gaps.
fn runs(values: &[Option<f64>]) -> Vec<Vec<(usize, f64)>> {
    let mut out: Vec<Vec<(usize, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => cur.push((i, *v)),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn fmt_tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(12.0), 20.0);
        assert_eq!(nice_ceiling(500.0), 500.0);
        assert_eq!(nice_ceiling(501.0), 1000.0);
    }

    #[test]
    fn gaps_split_lines_and_labels_are_escaped() {
        assert_eq!(
            runs(&[Some(1.0), None, Some(2.0), Some(3.0)]),
            vec![vec![(0, 1.0)], vec![(2, 2.0), (3, 3.0)]]
        );
        let svg = line_chart(
            "jobs",
            "/min",
            3,
            &Axis {
                from: "3 min ago",
                empty: "none",
            },
            &[Series {
                label: "<script>q</script>".into(),
                values: vec![Some(1.0), Some(4.0), None],
            }],
        )
        .into_string();
        assert!(svg.contains("&lt;script&gt;q&lt;/script&gt;"));
        assert!(!svg.contains("<script>"));
        assert_eq!(svg.matches("<polyline").count(), 1);
    }
}
