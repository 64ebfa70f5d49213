<?php
// Sleeps ?ms= milliseconds (default 100), then answers: a slow page for queueing tests.
usleep((int)($_GET["ms"] ?? 100) * 1000);
echo "slept";
