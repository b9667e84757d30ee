//! Results: every run's value per metric, printed as median (min-max) and
//! appended raw to a JSON-lines file for BENCHMARKS.md to link.

use std::{fs::File, io::Write, path::PathBuf};

pub struct Report {
    rows: Vec<Row>,
    out: Option<File>,
}

struct Row {
    scenario: &'static str,
    metric: String,
    unit: &'static str,
    values: Vec<f64>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q` quantile (0..=1) of `sorted`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    pub fn new(out: Option<PathBuf>) -> anyhow::Result<Self> {
        let out = match out {
            Some(path) => Some(File::options().create(true).append(true).open(path)?),
            None => None,
        };
        Ok(Self {
            rows: Vec::new(),
            out,
        })
    }

    /// One metric of a scenario, a value per run.
    pub fn add(
        &mut self,
        scenario: &'static str,
        metric: impl Into<String>,
        unit: &'static str,
        values: Vec<f64>,
    ) -> anyhow::Result<()> {
        let row = Row {
            scenario,
            metric: metric.into(),
            unit,
            values,
        };
        eprintln!(
            "   {:<52} {:>14} {}",
            row.metric,
            format_value(median(&row.values)),
            row.unit
        );
        if let Some(out) = &mut self.out {
            let line = serde_json::json!({
                "scenario": row.scenario,
                "metric": row.metric,
                "unit": row.unit,
                "values": row.values,
                "median": median(&row.values),
                "unix_time": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs(),
                "cores": std::thread::available_parallelism()?.get(),
            });
            writeln!(out, "{line}")?;
        }
        self.rows.push(row);
        Ok(())
    }

    pub fn print(&self) {
        println!(
            "{:<11} {:<52} {:>14} {:>29}  unit",
            "scenario", "metric", "median", "min - max"
        );
        for row in &self.rows {
            let min = row.values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = row.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "{:<11} {:<52} {:>14} {:>29}  {} ({} runs)",
                row.scenario,
                row.metric,
                format_value(median(&row.values)),
                format!("{} - {}", format_value(min), format_value(max)),
                row.unit,
                row.values.len()
            );
        }
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&sorted, 0.5), 50.0);
        assert_eq!(quantile(&sorted, 0.99), 99.0);
        assert_eq!(quantile(&sorted, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }
}
