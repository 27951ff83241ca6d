//! Prometheus text exposition (format 0.0.4): the writer and a latency
//! histogram, both pure; [`service`] reads what the supervisors record.
//! The proxy's worker serves the scrape (`[metrics] listen`).

pub mod service;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of a scrape's answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a metric family is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Only goes up (resets when its process starts again).
    Counter,
    /// Any value.
    Gauge,
    /// Observations in cumulative buckets, with `_sum` and `_count`.
    Histogram,
}

/// An exposition being written: each family's `# HELP` and `# TYPE`, then
/// its samples.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts family `name` (its samples follow).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the family begun last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// A whole histogram family: its buckets (cumulative, `+Inf` last),
    /// `_sum` and `_count`.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.family(name, Kind::Histogram, help);
        let mut cumulative = 0;
        for (bound, count) in BOUNDS.iter().zip(&histogram.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let le = number(*bound);
            self.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
        }
        let count = histogram.count.load(Ordering::Relaxed);
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count as f64);
        let sum = histogram.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count as f64);
    }

    /// The text, ending in a newline.
    pub fn finish(self) -> String {
        self.text
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: whole numbers without a fraction, `+Inf`, `NaN`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Upper bounds of the latency buckets, in seconds.
const BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Durations observed, per bucket (not cumulative until written).
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_histograms_are_cumulative_with_inf_sum_and_count() {
        let mut out = Exposition::default();
        out.family("x_total", Kind::Counter, "a \\ help\nline");
        out.sample("x_total", &[("why", "say \"hi\"\\\n")], 3.0);
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        out.histogram("lat_seconds", "latency", &h);
        let text = out.finish();
        assert!(
            text.contains("# HELP x_total a \\\\ help\\nline\n"),
            "{text}"
        );
        assert!(
            text.contains("x_total{why=\"say \\\"hi\\\"\\\\\\n\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.001\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_sum 60.006\n"), "{text}");
        assert!(text.contains("lat_seconds_count 3\n"), "{text}");
    }
}
