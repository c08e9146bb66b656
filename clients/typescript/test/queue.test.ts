import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { type Job, QueueClient, RequestError } from "../src/index.js";
import { TempState } from "./helpers.js";

function hasCode(code: string) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof RequestError, `expected a RequestError, got ${String(error)}`);
    assert.equal(error.code, code);
    return true;
  };
}

describe("the queue channel", () => {
  const state = new TempState();
  let queue: QueueClient;
  before(async () => {
    await state.start(["--queue-workers", "2"]);
    queue = await QueueClient.connect(state.options);
  });
  after(async () => {
    queue.close();
    await state.cleanup();
  });

  test("submit, wait as an async iterator, get with its attempts", async () => {
    const { job, deduplicated } = await queue.submit({ argv: ["sh", "-c", "echo out; echo err >&2"], cwd: state.dir });
    assert.equal(deduplicated, false);
    assert.ok(["queued", "running"].includes(job.state));
    const states: string[] = [];
    let last: Job | undefined;
    for await (const event of queue.wait(job.id)) {
      assert.equal(event.id, job.id);
      states.push(event.state);
      last = event;
    }
    assert.equal(last?.state, "succeeded");
    assert.equal(last?.exit_code, 0);
    assert.equal(states.at(-1), "succeeded");
    const { job: got, attempts } = await queue.get(job.id);
    assert.equal(got.state, "succeeded");
    assert.equal(attempts.length, 1);
    assert.equal(attempts[0]?.outcome, "succeeded");
    assert.equal(attempts[0]?.stdout_bytes, 4);
  });

  test("logs: data then an end, from an offset, of either stream", async () => {
    const { job } = await queue.submit({ argv: ["sh", "-c", "printf 'hello world'; printf oops >&2"] });
    await queue.waitForEnd(job.id);
    const events = [];
    for await (const event of queue.logs(job.id)) events.push(event);
    const data = Buffer.concat(events.flatMap((e) => (e.type === "log_data" ? [e.data] : [])));
    assert.equal(data.toString(), "hello world");
    assert.deepEqual(events.at(-1), { type: "log_end", offset: 11, state: "succeeded" });
    const tail = [];
    for await (const event of queue.logs(job.id, { offset: 6 })) if (event.type === "log_data") tail.push(event.data);
    assert.equal(Buffer.concat(tail).toString(), "world");
    const stderr = [];
    for await (const event of queue.logs(job.id, { stream: "stderr" })) if (event.type === "log_data") stderr.push(event.data);
    assert.equal(Buffer.concat(stderr).toString(), "oops");
  });

  test("logs with follow push output as the job writes it, until it ends", async () => {
    // The job prints a line, then waits for a file that the test creates
    // only after it has read that line: the stream must deliver it live.
    const gate = `${state.dir}/gate`;
    const { job } = await queue.submit({
      argv: ["sh", "-c", `echo first; while [ ! -e ${gate} ]; do sleep 0.01; done; echo second`],
    });
    const seen: string[] = [];
    let end: unknown;
    for await (const event of queue.logs(job.id, { follow: true })) {
      if (event.type === "log_data") {
        seen.push(event.data.toString());
        if (seen.join("") === "first\n") (await import("node:fs")).writeFileSync(gate, "");
      } else {
        end = event;
      }
    }
    assert.equal(seen.join(""), "first\nsecond\n");
    assert.deepEqual(end, { type: "log_end", offset: 13, state: "succeeded" });
  });

  test("an idempotency key returns the first job; another command with it conflicts", async () => {
    const first = await queue.submit({ argv: ["true"], key: "build-42" });
    const second = await queue.submit({ argv: ["true"], key: "build-42" });
    assert.equal(second.deduplicated, true);
    assert.equal(second.job.id, first.job.id);
    await assert.rejects(queue.submit({ argv: ["false"], key: "build-42" }), hasCode("idempotency_conflict"));
  });

  test("list pages newest first; stats counts", async () => {
    const page = await queue.list({ limit: 2 });
    assert.equal(page.jobs.length, 2);
    assert.ok((page.jobs[0]?.id ?? 0) > (page.jobs[1]?.id ?? 0));
    assert.notEqual(page.next_before_id, null);
    const next = await queue.list({ limit: 2, before_id: page.next_before_id as number });
    assert.ok(next.jobs.every((j) => j.id < (page.jobs[1]?.id ?? 0)));
    const stats = await queue.stats();
    assert.ok(stats.states.succeeded >= 3);
    assert.equal(stats.workers, 2);
    assert.ok(stats.queues.default !== undefined);
  });

  test("cancel a running job; cancel again is job_finished", async () => {
    const { job } = await queue.submit({ argv: ["sleep", "600"] });
    for await (const event of queue.wait(job.id)) if (event.state === "running") break;
    // Leaving the wait early closed that connection: reconnect.
    assert.ok(queue.closed);
    queue = await QueueClient.connect(state.options);
    const canceled = await queue.cancel(job.id);
    assert.equal(canceled.state, "canceled");
    await assert.rejects(queue.cancel(job.id), hasCode("job_finished"));
  });

  test("a dead job can be retried, then purged", async () => {
    const { job } = await queue.submit({ argv: ["false"], max_attempts: 1 });
    const dead = await queue.waitForEnd(job.id);
    assert.equal(dead.state, "dead");
    assert.deepEqual(await queue.list({ states: ["dead"] }).then((p) => p.jobs.map((j) => j.id)), [job.id]);
    assert.deepEqual(await queue.retry({ ids: [job.id] }), [job.id]);
    assert.equal((await queue.waitForEnd(job.id)).state, "dead");
    assert.deepEqual(await queue.purge({ all: true }), [job.id]);
    await assert.rejects(queue.get(job.id), hasCode("job_not_found"));
    const ok = await queue.submit({ argv: ["true"] });
    assert.equal(ok.job.cwd, process.cwd(), "a job without cwd runs where its submitter is");
    await queue.waitForEnd(ok.job.id);
    await assert.rejects(queue.retry({ ids: [ok.job.id] }), hasCode("job_not_dead"));
  });

  test("errors: invalid request, unknown job, wait for an unknown job", async () => {
    await assert.rejects(queue.submit({ argv: [] }), hasCode("invalid_request"));
    await assert.rejects(queue.submit({ argv: ["true"], cwd: "relative" }), hasCode("invalid_request"));
    await assert.rejects(queue.get(999_999), hasCode("job_not_found"));
    await assert.rejects(queue.waitForEnd(999_999), hasCode("job_not_found"));
    await assert.rejects(
      queue.submit({ argv: ["cat"], input: "x".repeat(1024 * 1024 + 1) }),
      hasCode("input_too_large"),
    );
    // Still usable.
    assert.ok((await queue.stats()).workers >= 1);
  });
});
