"""The SQL of the health checks, for both databases (built like `queries.py`).

Each check is one query that counts or finds the oldest, so a check costs the same
whatever the size of the installation's history.
"""

from __future__ import annotations

from edm.db.queries import DRIFTED_FUNNELS, both

# Enabled, unfrozen services and the last beat of a running worker for each, from any
# instance.
SERVICE_BEATS = both("""
    SELECT s.id, s.name, s.last_error,
           (SELECT max(h.beat_at) FROM worker_heartbeats h
            WHERE h.service_id = s.id AND h.state = 'running') AS last_beat,
           (SELECT h.last_error FROM worker_heartbeats h
            WHERE h.service_id = s.id ORDER BY h.beat_at DESC LIMIT 1) AS worker_error
    FROM services s WHERE s.enabled AND NOT s.frozen ORDER BY s.id""")

FROZEN_SERVICES = both("""
    SELECT name, frozen_reason, frozen_at FROM services
    WHERE enabled AND frozen ORDER BY id""")

# Rows whose lease ran out more than `:grace` seconds ago: the reaper should have taken
# them back by now.
PAST_LEASE = both("""
    SELECT count(*) AS rows, min(lease_expires_at) AS oldest FROM sub_tasks
    WHERE status IN ('allocated', 'sending') AND lease_expires_at < {now} - :grace""")

# A service some sub-task may go through: enabled and not frozen.
_USABLE = "v.enabled AND NOT v.frozen"

# Per running task with `pending` rows due that a usable service could send (not pinned
# to a frozen service; the task has a usable service among those it may use): since when
# its queue has not moved. That is the latest of: the task's start, the first of those
# rows falling due, and the last time one of its rows was sent or settled. A long task
# sending at its pace moves all the time, so only a stalled one ages.
QUEUE_AGE = both(f"""
    SELECT t.id, t.name, coalesce(t.started_at, t.created_at) AS started,
           min(s.next_attempt_at) AS first_due,
           (SELECT max(coalesce(x.finished_at, x.sending_at)) FROM sub_tasks x
            WHERE x.task_id = t.id) AS last_moved
    FROM sub_tasks s JOIN tasks t ON t.id = s.task_id
    WHERE t.status = 'running' AND s.status = 'pending' AND s.next_attempt_at <= {{now}}
      AND (s.pinned_service_id IS NULL
           OR EXISTS (SELECT 1 FROM services v WHERE v.id = s.pinned_service_id AND {_USABLE}))
      AND EXISTS (
          SELECT 1 FROM services v WHERE {_USABLE}
            AND (NOT EXISTS (SELECT 1 FROM task_services ts WHERE ts.task_id = t.id)
                 OR EXISTS (SELECT 1 FROM task_services ts
                            WHERE ts.task_id = t.id AND ts.service_id = v.id)))
      AND t.id IN :task_ids
    GROUP BY t.id, t.name, t.started_at, t.created_at ORDER BY t.id""")

# QUEUE_AGE reads every pending row of a task: at a million rows, most of a second. This
# first look takes from the indexes, per running task, its start and the latest moves of
# the row sent last and of rows in flight, failed or unknown. Each is a real row's, never
# later than QUEUE_AGE's own: a task that moved within the warning time by this look has
# by QUEUE_AGE's too, and only the others are read in full.
QUEUE_MOVES = both("""
    SELECT t.id, coalesce(t.started_at, t.created_at) AS started,
           (SELECT coalesce(x.finished_at, x.sending_at) FROM sub_tasks x
            WHERE x.task_id = t.id AND x.status = 'sent' AND x.sent_at IS NOT NULL
            ORDER BY x.sent_at DESC LIMIT 1) AS last_sent,
           (SELECT max(coalesce(x.finished_at, x.sending_at)) FROM sub_tasks x
            WHERE x.task_id = t.id AND x.status IN ('allocated', 'sending', 'failed', 'unknown'))
             AS last_other
    FROM tasks t WHERE t.status = 'running' ORDER BY t.id""")

UNKNOWN_OUTCOMES = both("""
    SELECT count(*) AS rows, min(coalesce(finished_at, sending_at, first_sending_at)) AS oldest
    FROM sub_tasks WHERE status = 'unknown'""")

EVENT_TROUBLE = both("""
    SELECT
      (SELECT count(*) FROM events
       WHERE status = 'unmatched' AND created_at < {now} - :unmatched_age) AS unmatched,
      (SELECT count(*) FROM events
       WHERE status = 'error' AND created_at >= {now} - :window) AS errors,
      (SELECT count(*) FROM webhook_requests
       WHERE status = 'invalid' AND received_at >= {now} - :window) AS invalid""")


def _same(left: str, right: str) -> str:
    """Equal, NULL equal to NULL and to nothing else (written out: older SQLite lacks IS NOT
    DISTINCT FROM; a CASE, since `x = NULL` is NULL and would hide the difference)."""
    return (
        f"(CASE WHEN {left} = {right} OR ({left} IS NULL AND {right} IS NULL)"
        " THEN 1 ELSE 0 END = 1)"
    )


_FACTS_FROM_EVENTS = """
    SELECT sub_task_id,
           sum(CASE WHEN event = 'opened' THEN 1 ELSE 0 END) AS opens,
           sum(CASE WHEN event = 'clicked' THEN 1 ELSE 0 END) AS clicks,
           min(CASE WHEN event IN ('delivered', 'opened', 'clicked', 'complained')
                    THEN occurred_at END) AS delivered_at,
           min(CASE WHEN event = 'opened' THEN occurred_at END) AS opened_at,
           min(CASE WHEN event = 'clicked' THEN occurred_at END) AS clicked_at,
           min(CASE WHEN event IN ('soft_bounce', 'hard_bounce') THEN occurred_at END)
               AS bounced_at,
           -- 'hard' sorts first: one hard bounce makes the type hard.
           min(CASE WHEN event = 'hard_bounce' THEN 'hard'
                    WHEN event = 'soft_bounce' THEN 'soft' END) AS bounce_type,
           min(CASE WHEN event = 'complained' THEN occurred_at END) AS complained_at,
           min(CASE WHEN event = 'unsubscribed' THEN occurred_at END) AS unsubscribed_at
    FROM events WHERE status = 'applied' AND sub_task_id IS NOT NULL GROUP BY sub_task_id"""

# Sub-tasks whose delivery facts are not exactly what their applied events imply.
_MISMATCHED_FACTS = f"""
    SELECT s.id FROM sub_tasks s LEFT JOIN ({_FACTS_FROM_EVENTS}) e ON e.sub_task_id = s.id
    WHERE s.open_count <> coalesce(e.opens, 0) OR s.click_count <> coalesce(e.clicks, 0)
       OR NOT {_same("s.delivered_at", "e.delivered_at")}
       OR NOT {_same("s.opened_at", "e.opened_at")}
       OR NOT {_same("s.clicked_at", "e.clicked_at")}
       OR NOT {_same("s.bounced_at", "e.bounced_at")}
       OR NOT {_same("s.complained_at", "e.complained_at")}
       OR NOT {_same("s.unsubscribed_at", "e.unsubscribed_at")}
       OR NOT {_same("s.bounce_type", "e.bounce_type")}"""

# The facts that must always hold, each counted: a count above zero is a violation.
# Suppressed contacts with nothing that suppressed them: no applied event of one of
# their sub-tasks that suppresses, no send the provider refused for the address, and no
# operator's word (an import's status, "import: ...", or "operator: ...").
_SUPPRESSED_WITHOUT_CAUSE = """
    SELECT c.id FROM contacts c
    WHERE c.status <> 'active'
      AND (c.status_reason IS NULL
           OR (c.status_reason NOT LIKE 'import: %' AND c.status_reason NOT LIKE 'operator: %'))
      AND NOT EXISTS (
          SELECT 1 FROM sub_tasks x JOIN events e ON e.sub_task_id = x.id
          WHERE x.contact_id = c.id AND e.status = 'applied'
            AND e.event IN ('hard_bounce', 'soft_bounce', 'complained', 'unsubscribed'))
      AND NOT EXISTS (
          SELECT 1 FROM sub_tasks x JOIN send_attempts a ON a.sub_task_id = x.id
          WHERE x.contact_id = c.id AND a.outcome = 'recipient')"""

SUPPRESSED_WITHOUT_CAUSE = both(_SUPPRESSED_WITHOUT_CAUSE + " ORDER BY c.id LIMIT :limit")

INVARIANTS = both(f"""
    SELECT
      (SELECT count(*) FROM sub_tasks
       WHERE status IN ('allocated', 'sending')
         AND (lease_token IS NULL OR lease_expires_at IS NULL)) AS leased_without_lease,
      (SELECT count(*) FROM sub_tasks s JOIN tasks t ON t.id = s.task_id
       WHERE t.status = 'completed'
         AND s.status IN ('pending', 'allocated', 'sending', 'unknown')) AS open_in_completed,
      (SELECT count(*) FROM sub_tasks s
       WHERE s.status = 'sent'
         AND NOT EXISTS (SELECT 1 FROM send_attempts a WHERE a.sub_task_id = s.id))
          AS sent_without_attempt,
      (SELECT count(*) FROM ({_MISMATCHED_FACTS}) m) AS facts_not_from_events,
      (SELECT count(*) FROM ({_SUPPRESSED_WITHOUT_CAUSE}) u) AS suppressed_without_cause,
      (SELECT count(*) FROM ({DRIFTED_FUNNELS}) f) AS funnels_not_kept""")

MISMATCHED_FACTS = both(_MISMATCHED_FACTS + " ORDER BY s.id LIMIT :limit")


def _from_events(aggregate: str, events: str) -> str:
    return f"""(SELECT {aggregate} FROM events e WHERE e.sub_task_id = sub_tasks.id
                  AND e.status = 'applied' AND e.event IN ({events}))"""


_IMPLY_DELIVERY = "'delivered', 'opened', 'clicked', 'complained'"

# Repair: the delivery facts of these sub-tasks set again from their applied events.
REDERIVE_FACTS = both(f"""
    UPDATE sub_tasks SET
      open_count = {_from_events("count(*)", "'opened'")},
      click_count = {_from_events("count(*)", "'clicked'")},
      delivered_at = {
    _from_events("min(occurred_at)", "'delivered', 'opened', 'clicked', 'complained'")
},
      opened_at = {_from_events("min(occurred_at)", "'opened'")},
      clicked_at = {_from_events("min(occurred_at)", "'clicked'")},
      bounced_at = {_from_events("min(occurred_at)", "'soft_bounce', 'hard_bounce'")},
      bounce_type = {
    _from_events(
        "min(CASE WHEN e.event = 'hard_bounce' THEN 'hard' ELSE 'soft' END)",
        "'soft_bounce', 'hard_bounce'",
    )
},
      complained_at = {_from_events("min(occurred_at)", "'complained'")},
      unsubscribed_at = {_from_events("min(occurred_at)", "'unsubscribed'")}
    WHERE id IN :ids""")

# What `edm repair --dry-run` says the event retry would take.
EVENTS_TO_RETRY_COUNT = both("""
    SELECT count(*) FROM events WHERE status IN ('received', 'unmatched', 'error')""")

# Each service and the last message it handed to its provider since `:since`.
SERVICES_SENT_SINCE = both("""
    SELECT s.name, s.provider, s.options,
           (SELECT max(a.finished_at) FROM send_attempts a
            WHERE a.service_id = s.id AND a.outcome = 'sent' AND a.finished_at >= :since)
               AS last_sent
    FROM services s ORDER BY s.id""")

LAST_WEBHOOK = both("SELECT max(received_at) FROM webhook_requests WHERE provider = :provider")

# Per service, its provider calls since `:since` and how many the provider accepted.
SEND_OUTCOMES = both("""
    SELECT s.name, count(*) AS calls,
           sum(CASE WHEN a.outcome = 'sent' THEN 1 ELSE 0 END) AS accepted
    FROM services s JOIN send_attempts a ON a.service_id = s.id
    WHERE a.finished_at >= :since
    GROUP BY s.id, s.name ORDER BY s.id""")

# Per service, what became of the messages it sent since `:since`.
# Per unfrozen service, what was sent since `:since` or its last unfreeze, the later (a
# service an operator, or the expiry of a freeze, let send again is judged afresh), and
# before `:settled`: messages sent a moment ago have had no time for their bounces to come
# back, and would make the rates look better than they are.
REPUTATION = both("""
    SELECT s.id, s.name, count(*) AS sent,
           sum(CASE WHEN x.bounce_type = 'hard' THEN 1 ELSE 0 END) AS hard_bounces,
           sum(CASE WHEN x.delivered_at IS NOT NULL THEN 1 ELSE 0 END) AS delivered,
           sum(CASE WHEN x.complained_at IS NOT NULL THEN 1 ELSE 0 END) AS complaints
    FROM services s JOIN sub_tasks x ON x.service_id = s.id
    WHERE x.sent_at >= :since AND x.sent_at <= :settled AND NOT s.frozen
      AND (s.unfrozen_at IS NULL OR x.sent_at >= s.unfrozen_at)
    GROUP BY s.id, s.name ORDER BY s.id""")

# Repair: lift freezes whose time is up.
UNFREEZE_EXPIRED = both("""
    UPDATE services SET frozen = false, frozen_reason = NULL, frozen_at = NULL,
                        frozen_until = NULL, unfrozen_at = {now}
    WHERE frozen AND frozen_until IS NOT NULL AND frozen_until <= {now}""")

EXPIRED_FREEZES = both("""
    SELECT name FROM services
    WHERE frozen AND frozen_until IS NOT NULL AND frozen_until <= {now} ORDER BY id""")

FREEZE_FOR = both("""
    UPDATE services SET frozen = true, frozen_reason = :reason, frozen_at = {now},
                        frozen_until = {now} + :seconds
    WHERE id = :id AND NOT frozen""")

RECORD_REPAIR = both("""
    INSERT INTO repairs (kind, count, detail, instance_id, at)
    VALUES (:kind, :count, :detail, :instance, {now})""")

REPAIR_HISTORY = both("""
    SELECT id, kind, count, detail, instance_id, at FROM repairs
    ORDER BY id DESC LIMIT :limit""")

# -- gauges of `GET /metrics`: a few aggregates per scrape, whatever the history's size -----
METRIC_SERVICES = both("""
    SELECT s.id, s.name, s.enabled, s.frozen, s.paused_until, s.interval_seconds,
           s.daily_quota, s.quota_day, s.quota_used,
           (SELECT max(h.beat_at) FROM worker_heartbeats h
            WHERE h.service_id = s.id AND h.state = 'running') AS last_beat
    FROM services s ORDER BY s.id""")

METRIC_SUB_TASKS = both("""
    SELECT s.task_id, s.status, count(*) AS n
    FROM sub_tasks s JOIN tasks t ON t.id = s.task_id
    WHERE t.status = 'running' GROUP BY s.task_id, s.status""")

METRIC_FUNNEL = both("""
    SELECT count(s.sent_at) AS sent, count(s.delivered_at) AS delivered,
           count(s.opened_at) AS opened, count(s.clicked_at) AS clicked,
           count(s.bounced_at) AS bounced, count(s.complained_at) AS complained,
           count(s.unsubscribed_at) AS unsubscribed
    FROM sub_tasks s JOIN tasks t ON t.id = s.task_id WHERE t.status = 'running'""")

LAST_WEBHOOKS = both("""
    SELECT provider, max(received_at) AS last FROM webhook_requests GROUP BY provider""")

# -- incidents and alert deliveries -------------------------------------------------------
OPEN_INCIDENTS = both("""
    SELECT id, check_name, alerted_at FROM incidents WHERE resolved_at IS NULL""")

OPEN_INCIDENT = both("""
    INSERT INTO incidents (check_name, opened_at, value, threshold, message, instance_id)
    VALUES (:check, {now}, :value, :threshold, :message, :instance)""")

INCIDENT_ID = both("""
    SELECT id FROM incidents WHERE check_name = :check AND resolved_at IS NULL""")

# The incident's alert is due: none queued yet, and the check's last alert is older than
# the cool-down. The UPDATE that flips `alerted_at` is what lets exactly one instance queue it.
MARK_ALERTED = both("""
    UPDATE incidents SET alerted_at = {now}
    WHERE id = :id AND alerted_at IS NULL AND resolved_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM incidents i
                      WHERE i.check_name = :check AND i.alerted_at > {now} - :cooldown)""")

RESOLVE_INCIDENT = both("""
    UPDATE incidents SET resolved_at = {now} WHERE id = :id AND resolved_at IS NULL""")

QUEUE_DELIVERY = both("""
    INSERT INTO alert_deliveries (incident_id, kind, url, payload, status, attempts,
                                  created_at, next_attempt_at)
    VALUES (:incident_id, :kind, :url, :payload, 'pending', 0, {now}, {now})""")

DUE_DELIVERIES = both("""
    SELECT id, kind, url, payload, attempts, next_attempt_at FROM alert_deliveries
    WHERE status = 'pending' AND next_attempt_at <= {now} ORDER BY id LIMIT :limit""")

# Taken by one instance for one try: the next try is pushed past the time a POST may take.
TAKE_DELIVERY = both("""
    UPDATE alert_deliveries SET attempts = attempts + 1, next_attempt_at = {now} + :hold
    WHERE id = :id AND status = 'pending' AND next_attempt_at = :seen""")

DELIVERED = both("""
    UPDATE alert_deliveries SET status = 'delivered', delivered_at = {now}, last_error = NULL
    WHERE id = :id""")

DELIVERY_FAILED = both("""
    UPDATE alert_deliveries SET status = :status, next_attempt_at = {now} + :delay,
                                last_error = :error
    WHERE id = :id""")

# One instance judges the checks per period, however many run.
JUDGE_TURN_SEED = both("""
    INSERT INTO app_settings (key, value) VALUES ('health_judged_at', '0')
    ON CONFLICT (key) DO NOTHING""")

TAKE_JUDGE_TURN = both("""
    UPDATE app_settings SET value = CAST({now} AS VARCHAR(40))
    WHERE key = 'health_judged_at' AND CAST(value AS DOUBLE PRECISION) <= {now} - :period""")
