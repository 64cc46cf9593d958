// The test's own view of the Azurite account, through the Azure SDK (@azure/storage-blob):
//   node blob.mjs create-container CONTAINER
//   node blob.mjs list CONTAINER PREFIX          (one blob name a line)
//   node blob.mjs read CONTAINER BLOB            (the blob's bytes, base64, on stdout)
// The endpoint, account and key come from AZURITE_URL, AZURITE_ACCOUNT and AZURITE_KEY (never on
// a command line); NODE_EXTRA_CA_CERTS names the CA of Azurite's certificate.
import { BlobServiceClient, StorageSharedKeyCredential } from "@azure/storage-blob";

const { AZURITE_URL, AZURITE_ACCOUNT, AZURITE_KEY } = process.env;
const service = new BlobServiceClient(AZURITE_URL, new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY));
const [command, container, name] = process.argv.slice(2);
const client = service.getContainerClient(container);

if (command === "create-container") {
  await client.create();
} else if (command === "list") {
  for await (const blob of client.listBlobsFlat({ prefix: name })) {
    console.log(blob.name);
  }
} else if (command === "read") {
  const body = await client.getBlobClient(name).downloadToBuffer();
  process.stdout.write(body.toString("base64"));
} else {
  console.error(`unknown command ${command}`);
  process.exit(2);
}
