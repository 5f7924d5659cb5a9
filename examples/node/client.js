#!/usr/bin/env node
// A jitauth client in Node.js, built at run time from the repository's
// proto with @grpc/proto-loader and @grpc/grpc-js: ask for a decision,
// do the work while the grant lives, then complete the grant.
//
//   npm ci
//   node client.js --target 127.0.0.1:50051 --account acme --subject alice \
//       --role analyst --action reports.export --resource-type report \
//       --resource-id q3-revenue --context env=prod
//
// Prints one JSON object (the decision and, on allow, the completion) and
// exits 0 when allowed and completed, 1 when denied, 2 on an RPC error or
// bad arguments.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");

function loadAuthorizer() {
  const definition = protoLoader.loadSync("jitauth/v1/authorizer.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the proto: account_id, grant_id
    enums: String, // enum values by name: "DECISION_ALLOW"
    longs: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).jitauth.v1.Authorizer;
}

function parseArgs(argv) {
  const args = {
    target: "127.0.0.1:50051", roles: [], context: {}, timeout: 5,
    resourceType: "", resourceId: "", outcome: "OUTCOME_SUCCESS",
    workMs: 10,
  };
  const single = {
    "--target": "target", "--account": "account", "--subject": "subject",
    "--action": "action", "--resource-type": "resourceType",
    "--resource-id": "resourceId", "--timeout": "timeout",
    "--work-ms": "workMs",
  };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag} needs a value`);
    if (flag in single) {
      args[single[flag]] = value;
    } else if (flag === "--role") {
      args.roles.push(value);
    } else if (flag === "--context") {
      const eq = value.indexOf("=");
      if (eq < 1) throw new Error(`--context expects KEY=VALUE: ${value}`);
      args.context[value.slice(0, eq)] = value.slice(eq + 1);
    } else if (flag === "--outcome") {
      args.outcome = "OUTCOME_" + value.toUpperCase();
    } else {
      throw new Error(`unknown option ${flag}`);
    }
  }
  for (const name of ["account", "subject", "action"]) {
    if (!args[name]) throw new Error(`--${name} is required`);
  }
  return args;
}

// Promise wrapper for one unary call with a deadline.
function call(client, method, request, seconds) {
  const deadline = new Date(Date.now() + seconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, response) =>
      err ? reject(err) : resolve(response));
  });
}

function doTheWork(ms) {
  // Stands in for the action the grant approves (an export, a job...).
  return new Promise((resolve) => setTimeout(resolve, Number(ms)));
}

async function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`error: ${err.message}`);
    return 2;
  }

  const Authorizer = loadAuthorizer();
  const client = new Authorizer(args.target,
    grpc.credentials.createInsecure());
  try {
    const decision = await call(client, "Authorize", {
      account_id: args.account,
      subject: { id: args.subject, roles: args.roles },
      action: args.action,
      resource: { type: args.resourceType, id: args.resourceId },
      context: args.context,
    }, args.timeout);

    if (decision.decision !== "DECISION_ALLOW") {
      console.log(JSON.stringify({ decision }));
      return 1;
    }

    await doTheWork(args.workMs);

    const completion = await call(client, "Complete", {
      grant_id: decision.grant.id,
      outcome: args.outcome,
    }, args.timeout);
    console.log(JSON.stringify({ decision, completion }));
    return 0;
  } catch (err) {
    // grpc-js errors carry the status code and the server's message.
    const name = Object.keys(grpc.status).find(
      (k) => grpc.status[k] === err.code);
    console.error(`error: ${name || err.code}: ${err.details || err.message}`);
    return 2;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; });
