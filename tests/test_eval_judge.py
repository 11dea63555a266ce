import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from livecc.chat import ChatClient, ChatError
from livecc.cli import main
from livecc.eval import Event, parse_verdict, run_judge, win_rate

WORDINGS = {
    "A": ["Commentary A is better aligned with the human commentary.", "**Commentary A** is better aligned.",
          "After comparing both, I choose Commentary A.", "commentary a is more aligned with the human one"],
    "B": ["Commentary B is better aligned with the human commentary", "Answer: B",
          "Commentary B is better aligned with the human commentary than Commentary A.",
          "While Commentary A has some details, Commentary B is better aligned."],
    "tie": ["Both are equally good.", "I cannot decide between Commentary A and Commentary B."],
}


@pytest.mark.parametrize("expected", ["A", "B", "tie"])
def test_parse_verdict_varied_wordings(expected):
    for text in WORDINGS[expected]:
        assert parse_verdict(text) == expected, text


def test_scores_of_the_reference_judge_files(shared_data, capsys):
    judges = shared_data / "livesports3k-cc" / "judges"
    for model_id, expected in (("LiveCC-7B-Instruct", "47.24%"), ("LiveCC-7B-Base", "47.21%")):
        with open(judges / f"GPT-4o_{model_id}.jsonl") as f:
            rate, n = win_rate([json.loads(line) for line in f], model_id)
        assert f"{rate:.2f}%" == expected and n == 1702
        assert main(["eval", "cc-score", str(judges / f"GPT-4o_{model_id}.jsonl"), "--model-id", model_id]) == 0
        assert expected in capsys.readouterr().out


class JudgeServer:
    """A chat-completions server on loopback: prefers the commentary sharing more words with the
    human one, answers in varied wordings, and fails its first `fail_first` requests with HTTP 500."""

    def __init__(self, fail_first=0):
        self.requests, self.fail_first, self.paths, self.headers = 0, fail_first, [], []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests += 1
                server.paths.append(self.path)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if server.requests <= server.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                assert body["temperature"] == 0 and body["seed"] == 42
                prompt = body["messages"][0]["content"]
                a, b, human = re.findall(r"---\n(.*?)\n----------", prompt, re.S)
                words = set(human.lower().split())
                sa, sb = (len(words & set(x.lower().split())) for x in (a, b))
                choice = "A" if sa > sb else "B" if sb > sa else "tie"
                text = WORDINGS[choice][server.requests % len(WORDINGS[choice])]
                reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def events_and_predictions(n=12):
    events, preds, base = [], {}, {}
    for i in range(n):
        e = Event(video=f"v{i}.mp4", video_id=f"v{i}", event_id=i, begin=0.0, end=10.0,
                  human="what a goal from the striker into the top corner", sport=["soccer", "tennis"][i % 2])
        events.append(e)
        preds[e.key] = "a goal from the striker, top corner" if i % 3 else "the crowd is waiting"
        base[e.key] = "players on the field near the goal"
    return events, preds, base


def test_judge_against_a_loopback_server_that_fails_then_recovers(tmp_path):
    events, preds, base = events_and_predictions()
    out = tmp_path / "verdicts.jsonl"
    with JudgeServer(fail_first=3) as server:
        client = ChatClient(server.url, "judge-model", "secret", backoff=0.01)
        result = run_judge(events, preds, base, "Ours", "GPT-4o", client, out, workers=4)
        assert client.retries == 3 and server.requests == 24 + 3
        assert server.headers[-1]["authorization"] == "Bearer secret"
        # 8 of 12 events: ours shares words with the human commentary and wins both orders.
        assert result["win_rate"] == pytest.approx(100 * 16 / 24) and result["asked"] == 24
        assert set(result["per_sport"]) == {"soccer", "tennis"}
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert rows[1] == {"video_event_id": "v1_1", "ab_winner": "Ours", "ba_winner": "Ours"}
        assert rows[0] == {"video_event_id": "v0_0", "ab_winner": "GPT-4o", "ba_winner": "GPT-4o"}
        # A rerun reuses every cached verdict: no request reaches the server.
        again = run_judge(events, preds, base, "Ours", "GPT-4o", client, out, workers=4)
        assert server.requests == 27 and again["cached"] == 24 and again["win_rate"] == result["win_rate"]


def test_judge_gives_up_clearly_and_keeps_what_it_got(tmp_path):
    events, preds, base = events_and_predictions(3)
    with JudgeServer(fail_first=10**6) as server:
        client = ChatClient(server.url, "m", "k", max_retries=1, backoff=0.01)
        with pytest.raises(ChatError, match="judgements failed"):
            run_judge(events, preds, base, "Ours", "GPT-4o", client, tmp_path / "v.jsonl", workers=2)


def test_azure_endpoint_shape(tmp_path):
    events, preds, base = events_and_predictions(1)
    with JudgeServer() as server:
        client = ChatClient(server.url, "gpt4o-deployment", "azkey", azure_api_version="2024-08-06")
        run_judge(events, preds, base, "Ours", "GPT-4o", client, tmp_path / "v.jsonl", workers=1)
    assert server.paths[0] == "/openai/deployments/gpt4o-deployment/chat/completions?api-version=2024-08-06"
    assert server.headers[0]["api-key"] == "azkey"


def test_missing_predictions_are_reported(tmp_path):
    events, preds, base = events_and_predictions(3)
    del preds[events[1].key]
    with pytest.raises(ValueError, match="lack a prediction"):
        run_judge(events, preds, base, "Ours", "GPT-4o", ChatClient("http://127.0.0.1:9"), tmp_path / "v.jsonl")


def test_the_client_goes_through_the_proxy_the_environment_names(tmp_path, monkeypatch):
    events, preds, base = events_and_predictions(1)
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with JudgeServer() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        client = ChatClient("http://judge.invalid:9/v1", "m", "k", max_retries=0)
        run_judge(events, preds, base, "Ours", "GPT-4o", client, tmp_path / "v.jsonl", workers=1)
    assert proxy.paths[0] == "http://judge.invalid:9/v1/chat/completions"  # a proxy is asked for the URL
