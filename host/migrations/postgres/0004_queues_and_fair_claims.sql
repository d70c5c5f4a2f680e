-- taskhost's PostgreSQL schema, version 4: queue settings, and the indexes
-- fair claims read. A claim takes each queue's share of its batch (by
-- weight, within the queue's concurrency limit), so it reads the startable
-- tasks queue by queue and counts each capped queue's running tasks.

-- A queue's settings, as the redb store's `queues` table holds them
-- (`QueueConfig`): most tasks running at once (NULL: no limit of its own),
-- its weight among queues with work, and how long and how many ended
-- tasks it keeps (NULL: the host's default).
CREATE TABLE taskhost_queues (
    name text PRIMARY KEY,
    concurrency integer CHECK (concurrency >= 0),
    weight integer NOT NULL CHECK (weight >= 1),
    retain_for_ms bigint,
    retain_count bigint
);

CREATE INDEX taskhost_tasks_claimable_by_queue ON taskhost_tasks (queue, priority DESC, due_at_ms, id)
    WHERE state IN ('pending', 'retrying');

-- Whether a queue has a task due now (one whose tasks all wait for their
-- due time takes no share).
CREATE INDEX taskhost_tasks_due_by_queue ON taskhost_tasks (queue, due_at_ms)
    WHERE state IN ('pending', 'retrying');

CREATE INDEX taskhost_tasks_running_by_queue ON taskhost_tasks (queue) WHERE state = 'running';

-- Claims no longer read the startable tasks across queues in one order.
DROP INDEX taskhost_tasks_claimable;
