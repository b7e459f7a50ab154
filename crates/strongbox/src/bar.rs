//! A progress bar on stderr when it is a terminal; nothing otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use strongbox_repo::Progress;

pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(verb: &str) -> Bar {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(&format!(
                "{verb} {{msg}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} [{{bar:30}}] {{eta}}"
            ))
            .expect("valid template"),
        );
        Bar(bar)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn start(&self, name: &str, total: Option<u64>) {
        self.0.set_message(name.to_string());
        if let Some(t) = total {
            self.0.inc_length(t);
        }
    }
    fn advance(&self, read: u64, _new: u64) {
        self.0.inc(read);
    }
}
