// One study's knee-node results in OHIF, driven by playwright-core in Debian's Chromium (tests/test_ohif.py).
//
// node ohif.cjs SPEC.json: SPEC has viewer (the study's viewer URL), series ({SC, SR, SEG: SeriesInstanceUID}),
// knees (how many), out (a folder), chromium (its path) and shownTours.  Shows the SC, then the SR (OHIF hydrates
// it into tracked measurements; their panel opened), then the SEG with its overlay on and off; a screenshot of
// each step in `out`, and out/result.json: the tracked measurements and what the viewport showed.  Every step
// waits on the viewer's state or events, never on a fixed delay.
'use strict';

const fs = require('fs');
const path = require('path');
const { chromium } = require(path.join(process.env.BROWSER_DIR, 'node_modules', 'playwright-core'));

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const STEP_TIMEOUT = 60000;
const MEASUREMENT_PANEL = '@ohif/extension-measurement-tracking.panelModule.trackedMeasurements';

async function main() {
  const browser = await chromium.launch({
    executablePath: spec.chromium,
    args: ['--enable-unsafe-swiftshader', '--use-angle=swiftshader', '--no-sandbox'],
  });
  const result = { console: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.setDefaultTimeout(STEP_TIMEOUT);
    page.on('console', message => {
      if (['error', 'warning'].includes(message.type())) result.console.push(message.text().slice(0, 300));
    });
    // OHIF's first-run tour, dismissed for good before the viewer starts.
    await page.addInitScript(tours => localStorage.setItem('shownTours', JSON.stringify(tours)), spec.shownTours);
    // The cornerstone viewport showing an image (one viewport in this layout).
    await page.addInitScript(() => {
      window.activeViewport = () => window.cornerstone?.getRenderingEngines?.()
        ?.flatMap(engine => engine.getViewports()).find(viewport => viewport.getCurrentImageId?.());
    });
    await page.goto(spec.viewer);
    await page.waitForFunction(count => window.services?.displaySetService?.getActiveDisplaySets().length >= count,
                               Object.keys(spec.series).length + 1);

    result.sc = await show(page, spec.series.SC);
    await page.screenshot({ path: path.join(spec.out, '1-sc.png') });

    await show(page, spec.series.SR, false);
    await page.waitForFunction(count => window.services.measurementService.getMeasurements().length >= count,
                               spec.knees);
    await rendered(page);
    result.measurements = await page.evaluate(() => window.services.measurementService.getMeasurements()
      .map(m => ({ label: m.label, toolName: m.toolName, referencedImageId: m.referencedImageId })));
    // The measurement panel, as a radiologist opens it: each knee's label listed.
    await page.evaluate(panel => window.services.panelService.activatePanel(panel, true), MEASUREMENT_PANEL);
    for (const { label } of result.measurements) {
      await page.getByText(label, { exact: true }).first().waitFor();
    }
    await page.evaluate(() => window.activeViewport().resetCamera());  // the panel took width: the image fitted again
    await rendered(page);
    await page.screenshot({ path: path.join(spec.out, '2-sr.png') });

    // The SEG: shown over the radiograph, then its overlay switched off; or OHIF says it cannot.
    const refused = new Promise(resolve => page.on('console', message => {
      const match = message.text().match(/Error: (Fractional segmentations are not yet supported)/);
      if (match) resolve(match[1]);
    }));
    await show(page, spec.series.SEG, false);
    const loaded = page.waitForFunction(() => {
      const { segmentationService, viewportGridService } = window.services;
      const viewportId = viewportGridService.getActiveViewportId();
      return segmentationService.getSegmentationRepresentations(viewportId).length > 0;
    }).then(() => null);
    const refusal = await Promise.race([loaded, refused]);
    await rendered(page);
    await page.screenshot({ path: path.join(spec.out, '3-seg-on.png') });
    if (refusal) {
      result.seg = { status: 'refused', message: refusal };
    } else {
      result.seg = { status: 'shown', on: await viewportPixels(page) };
      await page.evaluate(() => {
        const { segmentationService, viewportGridService } = window.services;
        const viewportId = viewportGridService.getActiveViewportId();
        const [representation] = segmentationService.getSegmentationRepresentations(viewportId);
        segmentationService.toggleSegmentationRepresentationVisibility(viewportId, representation);
      });
      await page.waitForFunction(() => {
        const { segmentationService, viewportGridService } = window.services;
        const viewportId = viewportGridService.getActiveViewportId();
        return segmentationService.getSegmentationRepresentations(viewportId).every(r => r.visible === false);
      });
      await rendered(page);
      await page.screenshot({ path: path.join(spec.out, '4-seg-off.png') });
      result.seg.off = await viewportPixels(page);
    }
  } finally {
    fs.writeFileSync(path.join(spec.out, 'result.json'), JSON.stringify(result, null, 2));
    await browser.close();
  }
}

// Puts a series in the active viewport; with `wait`, until its image is drawn.
async function show(page, seriesInstanceUID, wait = true) {
  const displaySetInstanceUID = await page.evaluate(uid => {
    const { displaySetService, viewportGridService } = window.services;
    const displaySet = displaySetService.getActiveDisplaySets().find(ds => ds.SeriesInstanceUID === uid);
    viewportGridService.setDisplaySetsForViewport({
      viewportId: viewportGridService.getActiveViewportId(),
      displaySetInstanceUIDs: [displaySet.displaySetInstanceUID],
    });
    return displaySet.displaySetInstanceUID;
  }, seriesInstanceUID);
  if (wait) {
    await page.waitForFunction(uid => {
      const { viewportGridService } = window.services;
      const state = viewportGridService.getState();
      const viewport = state.viewports.get(viewportGridService.getActiveViewportId());
      return viewport?.displaySetInstanceUIDs?.includes(uid);
    }, displaySetInstanceUID);
    await rendered(page);
  }
  return displaySetInstanceUID;
}

// Until the active cornerstone viewport has an image and has rendered it since the last request.
async function rendered(page) {
  await page.waitForFunction(() => window.activeViewport()?.getImageData?.());
  await page.evaluate(() => new Promise(resolve => {
    const viewport = window.activeViewport();
    viewport.element.addEventListener(window.cornerstone.EVENTS.IMAGE_RENDERED, () => resolve(), { once: true });
    viewport.render();
  }));
}

// The active viewport's canvas as a data URL (what the radiologist sees there, overlays included).
async function viewportPixels(page) {
  return page.evaluate(() => {
    const viewport = window.activeViewport();
    return { imageId: viewport.getCurrentImageId(), canvas: viewport.canvas.toDataURL('image/png') };
  });
}

main().catch(error => {
  console.error(error.stack || String(error));
  process.exit(1);
});
