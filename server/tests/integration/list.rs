//! ListWatches filters by state and labels and pages newest first.

use std::time::Duration;

use streamwatch_client::proto as v1;
use streamwatch_testkit::*;

#[tokio::test]
async fn filters_by_state_and_labels_and_pages() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut request = start_request(
            "data-lake",
            &format!("run-{i}/"),
            quiet_period(Duration::from_secs(3600)),
        );
        request
            .labels
            .insert("team".into(), if i % 2 == 0 { "etl" } else { "bi" }.into());
        request.labels.insert("run".into(), i.to_string());
        ids.push(begin(&mut client, request).await.watch_id);
    }
    client.cancel_watch(&ids[0], "").await.unwrap();
    client.cancel_watch(&ids[3], "").await.unwrap();

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_watches(v1::ListWatchesRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        pages.push(page.watches.len());
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, [3, 3, 1]);

    let all = client
        .list_watches(Default::default())
        .await
        .unwrap()
        .watches;
    let listed: Vec<&str> = all.iter().map(|w| w.watch_id.as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);

    let cancelled = client
        .list_watches(v1::ListWatchesRequest {
            state: v1::WatchState::Cancelled as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .watches;
    let mut cancelled: Vec<&str> = cancelled.iter().map(|w| w.watch_id.as_str()).collect();
    cancelled.sort();
    let mut expected = vec![ids[0].as_str(), ids[3].as_str()];
    expected.sort();
    assert_eq!(cancelled, expected);

    let etl_active = client
        .list_watches(v1::ListWatchesRequest {
            state: v1::WatchState::Active as i32,
            labels: [("team".to_owned(), "etl".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .watches;
    let runs: Vec<&str> = etl_active
        .iter()
        .map(|w| w.labels["run"].as_str())
        .collect();
    assert_eq!(runs, ["6", "4", "2"]);
}

#[tokio::test]
async fn a_page_of_groups_ends_before_it_reads_too_many_members() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut members = Vec::new();
    for _ in 0..100 {
        let w = begin(
            &mut client,
            start_request("data-lake", "", quiet_period(Duration::from_secs(3600))),
        )
        .await;
        members.push(w.watch_id);
    }
    // 21 groups of the same 100 members: 2,100 member reads in one page of 30.
    for _ in 0..21 {
        let group = v1::StartWatchRequest {
            members: members.clone(),
            ..Default::default()
        };
        begin(&mut client, group).await;
    }
    let page = client
        .list_watches(v1::ListWatchesRequest {
            page_size: 30,
            ..Default::default()
        })
        .await
        .unwrap();
    let groups = page
        .watches
        .iter()
        .filter(|w| !w.members.is_empty())
        .count();
    assert_eq!(
        (page.watches.len(), groups),
        (20, 20),
        "the page ends at 2,000 member reads"
    );
    assert!(!page.next_page_token.is_empty());
    let rest = client
        .list_watches(v1::ListWatchesRequest {
            page_size: 30,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let seen: std::collections::HashSet<_> = page
        .watches
        .iter()
        .chain(&rest.watches)
        .map(|w| w.watch_id.clone())
        .collect();
    assert_eq!(seen.len(), 50, "no watch skipped or listed twice");
}
