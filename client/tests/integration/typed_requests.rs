//! The typed builders start the watches they describe: the server reads back
//! the rule, its schedule or quiet window, the limits and the labels.

use std::time::Duration;

use streamwatch_client::{
    DelaySchedule, ListFilter, Policy, WatchRequest,
    proto::{self as v1, WatchState, policy::Rule},
};
use streamwatch_testkit::*;

fn secs(d: &Option<prost_types::Duration>) -> Option<i64> {
    d.as_ref().map(|d| d.seconds)
}

#[tokio::test]
async fn policies_round_trip_through_the_server() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let polling = begin(
        &mut client,
        WatchRequest::new("lake").prefix("p/").policy(
            Policy::polling(Duration::from_secs(30), 4)
                .schedule(DelaySchedule::Exponential)
                .min_objects(2)
                .timeout(Duration::from_secs(3600))
                .late_window(Duration::from_secs(60)),
        ),
    )
    .await
    .watch_id;
    let policy = client.get_watch(&polling).await.unwrap().policy.unwrap();
    let Some(Rule::Polling(rule)) = &policy.rule else {
        panic!("{policy:?}")
    };
    assert_eq!(
        (secs(&rule.delay), rule.max_repeats, rule.schedule()),
        (Some(30), 4, v1::DelaySchedule::Exponential)
    );
    assert_eq!(
        (
            policy.min_objects,
            secs(&policy.timeout),
            secs(&policy.late_window)
        ),
        (2, Some(3600), Some(60))
    );

    let counted = begin(
        &mut client,
        WatchRequest::new("lake")
            .expected_count(10)
            .label("job", "report")
            .client_token("report-1"),
    )
    .await
    .watch_id;
    let watch = client.get_watch(&counted).await.unwrap();
    assert!(matches!(
        watch.policy.unwrap().rule,
        Some(Rule::ExpectedCount(v1::ExpectedCountRule {
            objects: 10,
            quiet_window: None
        }))
    ));
    // The same client token returns the same watch.
    let again = client
        .start_watch(
            WatchRequest::new("lake")
                .expected_count(10)
                .label("job", "report")
                .client_token("report-1"),
        )
        .await
        .unwrap();
    assert_eq!(
        (again.watch.unwrap().watch_id, again.created),
        (counted.clone(), false)
    );

    let default = begin(&mut client, WatchRequest::new("lake")).await.watch_id;
    let policy = client.get_watch(&default).await.unwrap().policy.unwrap();
    let Some(Rule::QuietPeriod(rule)) = &policy.rule else {
        panic!("{policy:?}")
    };
    assert_eq!(secs(&rule.window), Some(60), "the server's default");

    let labelled = client
        .list_all_watches(
            &ListFilter::new()
                .label("job", "report")
                .state(WatchState::Active),
        )
        .await
        .unwrap();
    let ids: Vec<&str> = labelled.iter().map(|w| w.watch_id.as_str()).collect();
    assert_eq!(ids, [counted.as_str()]);
    assert_eq!(
        client
            .list_all_watches(&ListFilter::new())
            .await
            .unwrap()
            .len(),
        3
    );
}
